/*
 * sd_time: the one clock of the process for timestamps and deadlines.
 */
#ifndef SD_TIME_H
#define SD_TIME_H

#include <stdint.h>
#include <time.h>

/* Wall-clock milliseconds since the Unix epoch (job timestamps, long-poll deadlines,
 * retention). Any thread. */
static inline int64_t sd_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
