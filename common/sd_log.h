/*
 * sd_log: one line per event, at levels the operator sets.
 *
 * Levels and what they mean here:
 *   error  something failed that an operator must look at (a job failed for a reason
 *          other than bad input, the disk is full, the database refused a write);
 *   warn   the daemon recovered from something unusual (a job requeued after a crash,
 *          a client sent garbage, a retention sweep could not delete a file);
 *   info   the life of the service and of each job (start, stop, job created,
 *          started, finished, with durations);
 *   debug  per-request detail for diagnosis.
 * Group tags (the "component") name the subsystem: [main], [api], [store], [sched],
 * [prune].
 *
 * Formats (log_format):
 *   text  2026-11-25T20:50:48.123Z info [sched] job 01J...: message
 *   json  {"time":"2026-11-25T20:50:48.123Z","level":"info","component":"sched",
 *          "job":"01J...","message":"message"}   (one object per line; "job" is null
 *          outside a job; bytes that are not UTF-8 are written as the text \xNN)
 * When stderr is the journal ($JOURNAL_STREAM names it, as systemd sets it), each line
 * starts with its syslog priority, <3> error, <4> warn, <6> info, <7> debug, which
 * journald strips and files the line under; a log file gets no prefix.
 *
 * Thread safety: any thread may log; a line is written with one write(2) call, so lines
 * from different threads never interleave. sd_log_reopen() (SIGHUP) swaps the file
 * descriptor atomically.
 */
#ifndef SD_LOG_H
#define SD_LOG_H

#include <stdbool.h>

typedef enum sd_log_level {
	SD_LOG_ERROR = 0,
	SD_LOG_WARN,
	SD_LOG_INFO,
	SD_LOG_DEBUG,
} sd_log_level_t;

typedef enum sd_log_format {
	SD_LOG_TEXT = 0,
	SD_LOG_JSON,
} sd_log_format_t;

/* Sets the threshold and the destination (NULL = stderr, where $JOURNAL_STREAM is
 * checked). Returns 0 or -errno. Main thread, before other threads log. */
int sd_log_init(sd_log_level_t level, const char *path);
/* Changes the threshold only (SIGHUP reload). */
void sd_log_set_level(sd_log_level_t level);
/* Changes the line format (start-up, SIGHUP reload); any thread. */
void sd_log_set_format(sd_log_format_t f);
/* Reopens the log file (after rotation). Returns 0 or -errno; keeps the old fd then. */
int sd_log_reopen(void);
void sd_log_deinit(void);

/* Parses "error", "warn", "info", "debug". Returns 0 or -1. */
int sd_log_level_parse(const char *s, sd_log_level_t *out);
const char *sd_log_level_name(sd_log_level_t l);
/* Parses "text", "json". Returns 0 or -1. */
int sd_log_format_parse(const char *s, sd_log_format_t *out);

/*
 * Installs handlers for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT that write one last
 * error line naming the signal (and who sent it, or the faulting address), in the
 * current format, with async-signal-safe calls only, then let the signal kill the
 * process with its default action (a core dump where enabled). The main thread gets an
 * alternate signal stack, so a stack overflow there is reported too. Call once, from
 * the main thread, before other threads start. Returns 0 or -errno.
 */
int sd_log_fatal_signals(void);

bool sd_log_enabled(sd_log_level_t l);

void sd_log_write(sd_log_level_t l, const char *tag, const char *job, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Level-checked: arguments are not evaluated when the level is off. */
#define SD_LOG(level, tag, ...)                                                    \
	do {                                                                       \
		if (sd_log_enabled(level))                                         \
			sd_log_write(level, tag, NULL, __VA_ARGS__);               \
	} while (0)
#define SD_LOG_JOB(level, tag, job, ...)                                           \
	do {                                                                       \
		if (sd_log_enabled(level))                                         \
			sd_log_write(level, tag, job, __VA_ARGS__);                \
	} while (0)

#define log_error(tag, ...) SD_LOG(SD_LOG_ERROR, tag, __VA_ARGS__)
#define log_warn(tag, ...) SD_LOG(SD_LOG_WARN, tag, __VA_ARGS__)
#define log_info(tag, ...) SD_LOG(SD_LOG_INFO, tag, __VA_ARGS__)
#define log_debug(tag, ...) SD_LOG(SD_LOG_DEBUG, tag, __VA_ARGS__)
#define jlog_error(tag, job, ...) SD_LOG_JOB(SD_LOG_ERROR, tag, job, __VA_ARGS__)
#define jlog_warn(tag, job, ...) SD_LOG_JOB(SD_LOG_WARN, tag, job, __VA_ARGS__)
#define jlog_info(tag, job, ...) SD_LOG_JOB(SD_LOG_INFO, tag, job, __VA_ARGS__)
#define jlog_debug(tag, job, ...) SD_LOG_JOB(SD_LOG_DEBUG, tag, job, __VA_ARGS__)

#endif
