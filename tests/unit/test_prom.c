/*
 * test_prom: common/sd_prom, the Prometheus text of /metrics. Buckets are upper bounds
 * that include their own value (le = "less or equal"), so a value exactly on a bound
 * lands in that bound's bucket; the rendered buckets are cumulative and end at +Inf
 * equal to _count; the process families read the test's own /proc entries.
 */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/sd_prom.h"
#include "testutil.h"

static const double le_v[] = {0.1, 0.5, 1};
static const sd_prom_le_t le = {le_v, 3};

START_TEST(observe_bounds)
{
	sd_prom_hist_t h = {0};
	ck_assert(!sd_prom_hist_used(&h, &le));
	sd_prom_observe(&h, &le, 0.1); /* on a bound: that bound's bucket */
	sd_prom_observe(&h, &le, 0.10001);
	sd_prom_observe(&h, &le, 0.5);
	sd_prom_observe(&h, &le, 2);   /* past the last bound: +Inf */
	sd_prom_observe(&h, &le, -3);  /* a clock stepped back: counted at zero */
	ck_assert(sd_prom_hist_used(&h, &le));
	ck_assert_uint_eq(atomic_load(&h.bucket[0]), 2);
	ck_assert_uint_eq(atomic_load(&h.bucket[1]), 2);
	ck_assert_uint_eq(atomic_load(&h.bucket[2]), 0);
	ck_assert_uint_eq(atomic_load(&h.bucket[3]), 1);
	ck_assert_uint_eq(atomic_load(&h.sum_ns), 100000000 + 100010000 + 500000000 + 2000000000ull);
}
END_TEST

START_TEST(render_series)
{
	sd_prom_hist_t h = {0};
	sd_prom_observe(&h, &le, 0.25);
	sd_prom_observe(&h, &le, 0.75);
	sd_prom_observe(&h, &le, 9);
	char *buf = NULL;
	size_t len = 0;
	sd_prom_head(&buf, &len, "x_seconds", "histogram", "Help text.");
	sd_prom_hist_put(&buf, &len, "x_seconds", "route=\"/a/{id}\",method=\"GET\"", &h, &le);
	sd_prom_hist_put(&buf, &len, "x_seconds", "", &h, &le);
	ck_assert_str_eq(buf,
		"# HELP x_seconds Help text.\n"
		"# TYPE x_seconds histogram\n"
		"x_seconds_bucket{route=\"/a/{id}\",method=\"GET\",le=\"0.1\"} 0\n"
		"x_seconds_bucket{route=\"/a/{id}\",method=\"GET\",le=\"0.5\"} 1\n"
		"x_seconds_bucket{route=\"/a/{id}\",method=\"GET\",le=\"1\"} 2\n"
		"x_seconds_bucket{route=\"/a/{id}\",method=\"GET\",le=\"+Inf\"} 3\n"
		"x_seconds_sum{route=\"/a/{id}\",method=\"GET\"} 10.000000000\n"
		"x_seconds_count{route=\"/a/{id}\",method=\"GET\"} 3\n"
		"x_seconds_bucket{le=\"0.1\"} 0\n"
		"x_seconds_bucket{le=\"0.5\"} 1\n"
		"x_seconds_bucket{le=\"1\"} 2\n"
		"x_seconds_bucket{le=\"+Inf\"} 3\n"
		"x_seconds_sum 10.000000000\n"
		"x_seconds_count 3\n");
	ck_assert_uint_eq(len, strlen(buf));
	free(buf);
}
END_TEST

/* The value of family `name` on the page, or -1 when it is missing. */
static double sample(const char *page, const char *name)
{
	char key[128];
	snprintf(key, sizeof(key), "\n%s ", name);
	const char *p = strstr(page, key);
	return p ? strtod(p + strlen(key), NULL) : -1;
}

START_TEST(process_families)
{
	char *buf = NULL;
	size_t len = 0;
	void *hold = malloc(64 << 20);
	ck_assert_ptr_nonnull(hold);
	memset(hold, 1, 64 << 20); /* resident, so RSS is at least this */
	__asm__ volatile("" : : "r"(hold) : "memory"); /* the compiler may not drop the memset */
	sd_prom_process(&buf, &len);
	ck_assert_ptr_nonnull(buf);
	ck_assert_double_ge(sample(buf, "process_resident_memory_bytes"), 64 << 20);
	ck_assert_double_ge(sample(buf, "process_virtual_memory_bytes"),
			    sample(buf, "process_resident_memory_bytes"));
	ck_assert_double_ge(sample(buf, "process_cpu_seconds_total"), 0);
	/* stdin, stdout, stderr at least; not the descriptor the count itself opens */
	double fds = sample(buf, "process_open_fds");
	ck_assert_double_ge(fds, 3);
	int extra = open("/dev/null", O_RDONLY);
	char *again = NULL;
	size_t alen = 0;
	sd_prom_process(&again, &alen);
	ck_assert_double_eq(sample(again, "process_open_fds"), fds + 1);
	close(extra);
	ck_assert_double_gt(sample(buf, "process_max_fds"), 0);
	double start = sample(buf, "process_start_time_seconds");
	ck_assert_double_gt(start, (double)time(NULL) - 3600);
	/* /proc/stat's btime is whole seconds, so the start time can lead the clock by up
	 * to one second */
	ck_assert_double_le(start, (double)time(NULL) + 1);
	ck_assert_ptr_nonnull(strstr(buf, "# TYPE process_cpu_seconds_total counter\n"));
	free(again);
	free(buf);
	free(hold);
}
END_TEST

int main(void)
{
	const tu_case_t cases[] = {
		{"histogram", TU_TESTS(observe_bounds, render_series)},
		{"process", TU_TESTS(process_families)},
		{NULL},
	};
	return tu_main("prom", cases);
}
