/*
 * sd_prom: the Prometheus text exposition format (version 0.0.4) that /metrics speaks:
 * family headers, histograms that any thread may feed without a lock, and the
 * process_* families every Prometheus client exports (read from /proc).
 *
 * Glossary: a *family* is one metric name with its HELP and TYPE lines; a *series* is
 * one label set of it. Label values passed in here come from the daemon's own tables
 * (routes, stages, error codes, methods), never from a client, so they need no
 * escaping and their number is bounded.
 */
#ifndef SD_PROM_H
#define SD_PROM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The content type of the page (with its charset, as the format says it is UTF-8). */
#define SD_PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#define SD_PROM_LE_MAX 16

/* A histogram's bucket upper bounds, ascending, at most SD_PROM_LE_MAX (+Inf is
 * implied). Shared by every series of a family. */
typedef struct sd_prom_le {
	const double *v;
	size_t n;
} sd_prom_le_t;

/*
 * One histogram series. Zero-initialised storage is an empty histogram, so series can
 * live in arrays inside calloc'd or static structs. Observations from several threads
 * are atomic increments; a scrape during an observation may see the bucket before the
 * sum, never a bucket count that disagrees with _count (which is rendered as the sum
 * of the buckets).
 */
typedef struct sd_prom_hist {
	atomic_uint_fast64_t bucket[SD_PROM_LE_MAX + 1]; /* per bucket, not cumulative; last: +Inf */
	atomic_uint_fast64_t sum_ns;                     /* sum of observations, in 1e-9 units */
} sd_prom_hist_t;

/* Writes the HELP and TYPE lines of a family. type: counter, gauge, histogram. */
void sd_prom_head(char **buf, size_t *len, const char *name, const char *type,
		  const char *help);

/* Adds v (seconds, bytes, ...; a negative v counts as 0) to h. Any thread, lock-free. */
void sd_prom_observe(sd_prom_hist_t *h, const sd_prom_le_t *le, double v);

/* Whether h has seen an observation (families with many label sets show only those). */
bool sd_prom_hist_used(const sd_prom_hist_t *h, const sd_prom_le_t *le);

/* Writes the _bucket, _sum and _count lines of one series; labels is `a="x",b="y"` or
 * "" for none. The family's head is the caller's. */
void sd_prom_hist_put(char **buf, size_t *len, const char *name, const char *labels,
		      const sd_prom_hist_t *h, const sd_prom_le_t *le);

/*
 * Writes the process_* families of the calling process, named as Prometheus's own
 * clients name them: process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds,
 * process_start_time_seconds. A value /proc cannot give is left out (with its family),
 * never written as a made-up number. Any thread.
 */
void sd_prom_process(char **buf, size_t *len);

#endif
