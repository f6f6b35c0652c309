/* Hex digits: percent escapes, JSON \u escapes, chunk sizes.  libc only. */
#ifndef BEARERD_HEX_H
#define BEARERD_HEX_H

/* The value of the hex digit c, either case; -1 for any other character. */
int hex_value(char c);

/* The byte two hex digits at p[0..2) spell (0..255), or -1 unless both are hex digits. */
int hex_byte(const char *p);

#endif
