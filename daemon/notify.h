/*
 * The service manager's side channel: sd_notify state changes (READY,
 * RELOADING, STOPPING, STATUS, WATCHDOG) and socket activation.  Built on
 * libsystemd when HAVE_SYSTEMD; otherwise every call is a no-op and no socket
 * is ever passed in, so callers need no #ifdef.
 */
#ifndef BEARERD_NOTIFY_H
#define BEARERD_NOTIFY_H

#include <stdint.h>

/*
 * Takes the sockets passed by socket activation (LISTEN_FDS/LISTEN_PID, then
 * unset so nothing inherits them): returns their count with *fds a malloc'ed
 * array the caller frees, each fd CLOEXEC and non-blocking; 0 (and *fds left
 * alone) when not activated; -EINVAL if one is not a listening AF_UNIX stream
 * socket, or another negative errno.
 */
int notify_listen_fds(int **fds);

/* Tells the manager start-up (or a reload) is complete: READY=1. */
void notify_ready(void);
/* A reload has begun: RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload expects. */
void notify_reloading(void);
/* Shutdown has begun: STOPPING=1. */
void notify_stopping(void);
/* A one-line STATUS= shown by systemctl status; newlines are replaced by spaces. */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Whether the manager expects keep-alives (WatchdogSec=): returns 1 with
 * *usec the watchdog timeout (ping at half of it), 0 when disabled, or a
 * negative errno.
 */
int notify_watchdog_usec(uint64_t *usec);
/* One keep-alive: WATCHDOG=1. */
void notify_watchdog(void);

#endif
