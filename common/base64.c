/*
 * base64 and base64url (see base64.h), written out in libc: the daemon used
 * OpenSSL's EVP_EncodeBlock with the url alphabet patched in afterwards, and
 * bearerctl, which may not link OpenSSL, carried a decoder of its own.
 */
#include "base64.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int
encode(const unsigned char *in, size_t len, const char *alphabet, bool pad, char **out)
{
	size_t i = 0, o = 0, rest;
	uint32_t v;
	char *s;

	if (len > BASE64_MAX_LEN)
		return -E2BIG;
	s = malloc((len + 2) / 3 * 4 + 1);
	if (s == NULL)
		return -ENOMEM;
	for (; len - i >= 3; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		s[o++] = alphabet[v >> 18];
		s[o++] = alphabet[v >> 12 & 63];
		s[o++] = alphabet[v >> 6 & 63];
		s[o++] = alphabet[v & 63];
	}
	rest = len - i;
	if (rest > 0) {
		v = (uint32_t)in[i] << 16 | (rest == 2 ? (uint32_t)in[i + 1] << 8 : 0);
		s[o++] = alphabet[v >> 18];
		s[o++] = alphabet[v >> 12 & 63];
		if (rest == 2)
			s[o++] = alphabet[v >> 6 & 63];
		else if (pad)
			s[o++] = '=';
		if (pad)
			s[o++] = '=';
	}
	s[o] = '\0';
	*out = s;
	return 0;
}

int
base64_encode(const void *in, size_t len, char **out)
{
	return encode(in, len, std_alphabet, true, out);
}

int
base64url_encode(const void *in, size_t len, char **out)
{
	return encode(in, len, url_alphabet, false, out);
}

/* The 6-bit value of a base64url character, or -1. */
static int
url_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

int
base64url_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
	size_t n = len, pad, o = 0;
	unsigned char *buf;
	uint32_t acc = 0;
	int bits = 0, last;

	if (len > BASE64_MAX_LEN)
		return -E2BIG;
	/* optional padding: only at the end, and only as much as the length needs */
	while (n > 0 && in[n - 1] == '=')
		n--;
	if (n % 4 == 1)
		return -EINVAL;
	pad = (4 - n % 4) % 4;
	if (len != n && len != n + pad)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (url_value(in[i]) < 0)
			return -EINVAL;
	}
	/* the bits after the last whole byte must be zero: one encoding per value */
	if (pad > 0) {
		last = url_value(in[n - 1]);
		if ((pad == 2 && (last & 0x0f) != 0) || (pad == 1 && (last & 0x03) != 0))
			return -EINVAL;
	}
	buf = malloc(n / 4 * 3 + 3);
	if (buf == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		acc = (acc << 6 | (uint32_t)url_value(in[i])) & 0xffffff;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[o++] = (unsigned char)(acc >> bits);
		}
	}
	buf[o] = '\0';
	*out = buf;
	*out_len = o;
	return 0;
}
