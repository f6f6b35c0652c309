/*
 * The clocks, in milliseconds (STYLE.md rule 13): the boot clock for how long
 * a token stays valid (it counts time suspended), the wall clock for checking
 * expiry times against the world, the monotonic clock for short intervals.
 * libc only.
 */
#ifndef BEARERD_CLOCK_H
#define BEARERD_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Any clock_gettime clock in milliseconds. */
int64_t clock_ms(clockid_t id);

/* CLOCK_MONOTONIC: timeouts and grace periods; it stands still while suspended. */
int64_t clock_mono_ms(void);

/*
 * CLOCK_MONOTONIC_COARSE: the same clock at the kernel tick's resolution (a
 * few ms) and cheaper to read; for deadlines on the serving hot path.
 */
int64_t clock_coarse_ms(void);

/* CLOCK_BOOTTIME: like the monotonic clock, but it runs on while the host is suspended. */
int64_t clock_boot_ms(void);

/* CLOCK_REALTIME: milliseconds since the epoch; it can step (NTP, an operator). */
int64_t clock_wall_ms(void);

#endif
