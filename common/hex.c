/*
 * Hex digits (see hex.h): one decoder where http.c, http_parse.c, json.c,
 * secret.c and compat.c each had their own.
 */
#include "hex.h"

int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int
hex_byte(const char *p)
{
	int hi = hex_value(p[0]), lo;

	if (hi < 0)
		return -1;
	lo = hex_value(p[1]);
	return lo < 0 ? -1 : hi << 4 | lo;
}
