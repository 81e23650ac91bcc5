/*
 * sd_prom: Prometheus text exposition (see sd_prom.h).
 *
 * Histograms keep one counter per bucket (not cumulative), so an observation is one
 * atomic increment plus one for the sum; the cumulative counts Prometheus wants are
 * added up at render time, when a scrape (every few seconds at most) pays for it
 * instead of every request. The sum is kept in integer nanounits because C11 has no
 * atomic add on doubles; 2^64 ns is 584 years of observed time.
 *
 * The process_* values come from /proc/self/stat (CPU ticks, memory, start time in
 * ticks since boot), /proc/stat (the boot time), /proc/self/fd and getrlimit, as
 * Prometheus's Go client reads them, so dashboards built for any exporter work here.
 */
#include "common/sd_prom.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/sd_str.h"

void sd_prom_head(char **buf, size_t *len, const char *name, const char *type,
		  const char *help)
{
	sd_appendf(buf, len, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void sd_prom_observe(sd_prom_hist_t *h, const sd_prom_le_t *le, double v)
{
	if (!(v > 0))
		v = 0; /* a clock stepped back, or NaN: counted, at zero */
	size_t b = 0;
	while (b < le->n && v > le->v[b])
		b++;
	atomic_fetch_add(&h->bucket[b], 1);
	/* Beyond 2^63 ns (292 years) one observation is no longer a duration anyone made. */
	double ns = v * 1e9 < 9.2e18 ? v * 1e9 : 9.2e18;
	atomic_fetch_add(&h->sum_ns, (uint_fast64_t)(ns + 0.5));
}

bool sd_prom_hist_used(const sd_prom_hist_t *h, const sd_prom_le_t *le)
{
	for (size_t b = 0; b <= le->n; b++)
		if (atomic_load(&h->bucket[b]))
			return true;
	return false;
}

void sd_prom_hist_put(char **buf, size_t *len, const char *name, const char *labels,
		      const sd_prom_hist_t *h, const sd_prom_le_t *le)
{
	const char *sep = labels[0] ? "," : "";
	uint64_t cum = 0;
	for (size_t b = 0; b <= le->n; b++) {
		cum += atomic_load(&h->bucket[b]);
		char bound[32];
		if (b < le->n)
			snprintf(bound, sizeof(bound), "%g", le->v[b]);
		else
			snprintf(bound, sizeof(bound), "+Inf");
		sd_appendf(buf, len, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, labels, sep,
			   bound, cum);
	}
	const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
	sd_appendf(buf, len, "%s_sum%s%s%s %.9f\n%s_count%s%s%s %" PRIu64 "\n", name, open, labels,
		   close, (double)atomic_load(&h->sum_ns) / 1e9, name, open, labels, close, cum);
}

/* Reads a small file whole (NUL-terminated) into buf; returns its length or -1. */
static ssize_t slurp(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t n = 0;
	ssize_t r;
	while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	buf[n] = 0;
	return (ssize_t)n;
}

/* Seconds since the epoch at which the machine booted (/proc/stat's btime), or -1. */
static long long boot_time(void)
{
	FILE *f = fopen("/proc/stat", "re");
	if (!f)
		return -1;
	char *line = NULL;
	size_t cap = 0;
	long long bt = -1;
	while (getline(&line, &cap, f) > 0)
		if (sscanf(line, "btime %lld", &bt) == 1)
			break;
	free(line);
	fclose(f);
	return bt;
}

/* How many descriptors the process holds, not counting the one this count opens. */
static long open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	long n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n - 1;
}

void sd_prom_process(char **buf, size_t *len)
{
	long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	char stat[1024];
	/* Fields after the command name (which may hold spaces and parentheses, hence the
	 * last ')'): state is field 3; utime 14, stime 15, starttime 22, vsize 23, rss 24. */
	unsigned long long utime, stime, start, vsize;
	long long rss;
	const char *p = slurp("/proc/self/stat", stat, sizeof(stat)) > 0 ? strrchr(stat, ')') : NULL;
	bool have = p && tick > 0 && page > 0 &&
		    sscanf(p + 1, " %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %llu %llu %*s %*s %*s"
				  " %*s %*s %*s %llu %llu %lld",
			   &utime, &stime, &start, &vsize, &rss) == 5;
	if (have) {
		sd_prom_head(buf, len, "process_cpu_seconds_total", "counter",
			     "Total user and system CPU time spent in seconds.");
		sd_appendf(buf, len, "process_cpu_seconds_total %.2f\n",
			   (double)(utime + stime) / (double)tick);
		sd_prom_head(buf, len, "process_resident_memory_bytes", "gauge",
			     "Resident memory size in bytes.");
		sd_appendf(buf, len, "process_resident_memory_bytes %lld\n", rss * (long long)page);
		sd_prom_head(buf, len, "process_virtual_memory_bytes", "gauge",
			     "Virtual memory size in bytes.");
		sd_appendf(buf, len, "process_virtual_memory_bytes %llu\n", vsize);
		long long bt = boot_time();
		if (bt >= 0) {
			sd_prom_head(buf, len, "process_start_time_seconds", "gauge",
				     "Start time of the process since unix epoch in seconds.");
			sd_appendf(buf, len, "process_start_time_seconds %.2f\n",
				   (double)bt + (double)start / (double)tick);
		}
	}
	long fds = open_fds();
	if (fds >= 0) {
		sd_prom_head(buf, len, "process_open_fds", "gauge", "Number of open file descriptors.");
		sd_appendf(buf, len, "process_open_fds %ld\n", fds);
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		sd_prom_head(buf, len, "process_max_fds", "gauge",
			     "Maximum number of open file descriptors.");
		sd_appendf(buf, len, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
	}
}
