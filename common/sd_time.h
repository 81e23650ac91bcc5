/*
 * sd_time: the one clock of the process for timestamps and deadlines.
 */
#ifndef SD_TIME_H
#define SD_TIME_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* Wall-clock milliseconds since the Unix epoch (job timestamps, long-poll deadlines,
 * retention). Any thread. */
static inline int64_t sd_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "2026-12-02T02:10:00Z": a unix-ms time in UTC to the second, for logs and tables
 * meant for people. Any thread. */
#define SD_TIME_ISO_MAX 32
static inline void sd_time_iso(int64_t ms, char out[SD_TIME_ISO_MAX])
{
	time_t sec = (time_t)(ms / 1000);
	struct tm tm;
	if (!gmtime_r(&sec, &tm) || !strftime(out, SD_TIME_ISO_MAX, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(out, SD_TIME_ISO_MAX, "@%lld ms", (long long)ms);
}

#endif
