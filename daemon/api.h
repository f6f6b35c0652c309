/* Local API: the HTTP/1.1 routes on the Unix socket. */
#ifndef BEARERD_API_H
#define BEARERD_API_H
#endif
