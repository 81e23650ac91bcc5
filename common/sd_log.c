/*
 * sd_log: leveled single-line logging (see sd_log.h).
 *
 * Each line is formatted into a stack buffer and emitted with one write(2) on an
 * O_APPEND descriptor, which keeps lines whole across threads without a lock and
 * cooperates with external rotation (the daemon reopens on SIGHUP).
 */
#include "common/sd_log.h"

#include "common/sd_assert.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int cur_level = SD_LOG_INFO;
static atomic_int cur_fd = STDERR_FILENO;
static char *log_path;

static const char *const names[] = {"error", "warn", "info", "debug"};

const char *sd_log_level_name(sd_log_level_t l)
{
	return (unsigned)l < 4 ? names[l] : "?";
}

int sd_log_level_parse(const char *s, sd_log_level_t *out)
{
	for (int i = 0; i < 4; i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (sd_log_level_t)i;
			return 0;
		}
	}
	return -1;
}

bool sd_log_enabled(sd_log_level_t l) { return (int)l <= atomic_load(&cur_level); }

static int open_log(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	return fd < 0 ? -errno : fd;
}

int sd_log_init(sd_log_level_t level, const char *path)
{
	atomic_store(&cur_level, (int)level);
	free(log_path);
	log_path = NULL;
	if (!path)
		return 0;
	int fd = open_log(path);
	if (fd < 0)
		return fd;
	log_path = strdup(path);
	int old = atomic_exchange(&cur_fd, fd);
	if (old != STDERR_FILENO)
		close(old);
	return 0;
}

void sd_log_set_level(sd_log_level_t level) { atomic_store(&cur_level, (int)level); }

int sd_log_reopen(void)
{
	if (!log_path)
		return 0;
	int fd = open_log(log_path);
	if (fd < 0)
		return fd;
	int old = atomic_exchange(&cur_fd, fd);
	if (old != STDERR_FILENO)
		close(old);
	return 0;
}

void sd_log_deinit(void)
{
	int old = atomic_exchange(&cur_fd, STDERR_FILENO);
	if (old != STDERR_FILENO)
		close(old);
	free(log_path);
	log_path = NULL;
}

void sd_log_write(sd_log_level_t l, const char *tag, const char *job, const char *fmt, ...)
{
	char line[2048];
	struct timeval tv;
	gettimeofday(&tv, NULL);
	struct tm tm;
	gmtime_r(&tv.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s [%s] ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, (int)(tv.tv_usec / 1000), sd_log_level_name(l), tag);
	if (job && n > 0 && (size_t)n < sizeof(line))
		n += snprintf(line + n, sizeof(line) - (size_t)n, "job %s: ", job);
	if (n > 0 && (size_t)n < sizeof(line)) {
		va_list ap;
		va_start(ap, fmt);
		n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
		va_end(ap);
	}
	if (n < 0)
		return;
	size_t len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
	/* One event, one line: newlines inside a message (engine text) are flattened. */
	for (size_t i = 0; i < len; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[len++] = '\n';
	ssize_t w = write(atomic_load(&cur_fd), line, len);
	(void)w;
}

void sd__assert_abort(const char *cond, const char *file, int line)
{
	sd_log_write(SD_LOG_ERROR, "assert", NULL, "%s:%d: '%s' does not hold; aborting",
		     file, line, cond);
	abort();
}

void sd__assert_log(const char *cond, const char *file, int line)
{
	sd_log_write(SD_LOG_ERROR, "assert", NULL, "%s:%d: '%s' does not hold", file, line,
		     cond);
}
