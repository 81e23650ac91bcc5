/*
 * sd_log: leveled single-line logging (see sd_log.h).
 *
 * Each line is built in a stack buffer and emitted with one write(2) on an O_APPEND
 * descriptor, which keeps lines whole across threads without a lock and cooperates with
 * external rotation (the daemon reopens on SIGHUP).
 *
 * The line builder (lb_*), the clock and the civil-date arithmetic are async-signal-safe
 * on purpose: the fatal-signal handler writes its last line through the same emit() as
 * every other line, so it has the same format, prefix and destination. That is why the
 * time is computed here rather than with gmtime_r and no stdio touches a line: only the
 * message of an ordinary line is formatted with vsnprintf, before emit().
 */
#include "common/sd_log.h"

#include "common/sd_assert.h"
#include "common/sd_str.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MSG_MAX 2048
/* A message escaped for JSON grows (a control byte is 6 characters). */
#define LINE_MAX_ 4096

static atomic_int cur_level = SD_LOG_INFO;
static atomic_int cur_fd = STDERR_FILENO;
static atomic_int cur_format = SD_LOG_TEXT;
static atomic_bool to_journal;
/* Set by the fatal-signal handler: the line it writes stays the last, as other threads'
 * lines stop here. */
static atomic_bool dying;
static char *log_path;

static const char *const names[] = {"error", "warn", "info", "debug"};
/* syslog priorities (LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG) as journald reads them. */
static const char *const prefixes[] = {"<3>", "<4>", "<6>", "<7>"};
static const char *const formats[] = {"text", "json"};

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

int sd_log_format_parse(const char *s, sd_log_format_t *out)
{
	for (int i = 0; i < 2; i++) {
		if (strcmp(s, formats[i]) == 0) {
			*out = (sd_log_format_t)i;
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

/* systemd sets JOURNAL_STREAM to "device:inode" of the stream it connected; stderr is
 * still that stream only if they match (a shell redirect keeps the variable, not the
 * stream). */
static bool stderr_is_journal(void)
{
	const char *v = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	char extra;
	struct stat st;
	if (!v || sscanf(v, "%llu:%llu%c", &dev, &ino, &extra) != 2 ||
	    fstat(STDERR_FILENO, &st))
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

int sd_log_init(sd_log_level_t level, const char *path)
{
	atomic_store(&cur_level, (int)level);
	free(log_path);
	log_path = NULL;
	atomic_store(&to_journal, !path && stderr_is_journal());
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

void sd_log_set_format(sd_log_format_t f) { atomic_store(&cur_format, (int)f); }

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

/* ---- the line builder (async-signal-safe: no allocation, no stdio, no locks) ---- */

typedef struct lb {
	char *buf;
	size_t len, cap; /* cap: bytes the content may use */
} lb_t;

static void lb_put(lb_t *b, const char *s, size_t n)
{
	if (n > b->cap - b->len)
		n = b->cap - b->len;
	memcpy(b->buf + b->len, s, n);
	b->len += n;
}

static void lb_str(lb_t *b, const char *s) { lb_put(b, s, strlen(s)); }

/* v in decimal, zero-padded to width digits. */
static void lb_uint(lb_t *b, uint64_t v, int width)
{
	char d[24];
	int n = 0;
	do {
		d[sizeof(d) - 1 - n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v && n < 20);
	while (n < width && n < 20)
		d[sizeof(d) - 1 - n++] = '0';
	lb_put(b, d + sizeof(d) - n, (size_t)n);
}

static void lb_hex(lb_t *b, uint64_t v)
{
	char d[16];
	int n = 0;
	do {
		d[sizeof(d) - 1 - n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	lb_str(b, "0x");
	lb_put(b, d + sizeof(d) - n, (size_t)n);
}

/* "2026-11-25T20:50:48.123Z". The civil date from days since 1970-01-01 is Howard
 * Hinnant's days_from_civil inverse, exact for the proleptic Gregorian calendar. */
static void lb_time(lb_t *b, const struct timespec *ts)
{
	int64_t secs = ts->tv_sec;
	int64_t z = (secs >= 0 ? secs : secs - 86399) / 86400;
	int64_t sod = secs - z * 86400;
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	uint64_t doe = (uint64_t)(z - era * 146097);
	uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	uint64_t mp = (5 * doy + 2) / 153;
	uint64_t day = doy - (153 * mp + 2) / 5 + 1, month = mp < 10 ? mp + 3 : mp - 9;
	int64_t year = (int64_t)yoe + era * 400 + (month <= 2);
	lb_uint(b, (uint64_t)(year < 0 ? 0 : year), 4);
	lb_str(b, "-");
	lb_uint(b, month, 2);
	lb_str(b, "-");
	lb_uint(b, day, 2);
	lb_str(b, "T");
	lb_uint(b, (uint64_t)sod / 3600, 2);
	lb_str(b, ":");
	lb_uint(b, (uint64_t)sod / 60 % 60, 2);
	lb_str(b, ":");
	lb_uint(b, (uint64_t)sod % 60, 2);
	lb_str(b, ".");
	lb_uint(b, (uint64_t)ts->tv_nsec / 1000000, 3);
	lb_str(b, "Z");
}

/* Text: newlines inside a message (engine text) become spaces, one event one line. */
static void lb_text(lb_t *b, const char *s)
{
	size_t start = b->len;
	lb_str(b, s);
	for (size_t i = start; i < b->len; i++)
		if (b->buf[i] == '\n')
			b->buf[i] = ' ';
}

/* A JSON string: escapes whole or not at all, and always its closing quote, so a
 * truncated message is still valid JSON. A byte that is not part of well-formed UTF-8
 * is written as the text \xNN (as sd_utf8_escape does), so any parser reads the line. */
static void lb_json(lb_t *b, const char *s)
{
	if (b->cap - b->len < 2)
		return;
	b->cap--; /* room for the closing quote, whatever comes */
	lb_str(b, "\"");
	size_t n = strlen(s);
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		size_t k = 1, el = 0;
		const char *unit = s + i;
		if (c == '"' || c == '\\') {
			esc[0] = '\\', esc[1] = (char)c, el = 2;
		} else if (c == '\n' || c == '\r' || c == '\t') {
			esc[0] = '\\', esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't', el = 2;
		} else if (c < 0x20 || c == 0x7f) {
			memcpy(esc, "\\u00", 4);
			esc[4] = "0123456789abcdef"[c >> 4], esc[5] = "0123456789abcdef"[c & 15];
			el = 6;
		} else if (c >= 0x80) {
			/* The shortest well-formed prefix at s+i is the sequence itself. */
			while (k <= 4 && k <= n - i && !sd_utf8_valid(s + i, k))
				k++;
			if (k > 4 || k > n - i) {
				k = 1;
				memcpy(esc, "\\\\x", 3);
				esc[3] = "0123456789abcdef"[c >> 4], esc[4] = "0123456789abcdef"[c & 15];
				el = 5;
			}
		}
		size_t ul = el ? el : k;
		if (ul > b->cap - b->len)
			break;
		lb_put(b, el ? esc : unit, ul);
		i += k;
	}
	b->cap++;
	lb_str(b, "\"");
}

/* Builds and writes one line. Async-signal-safe (the fatal handler calls it). */
static void emit(sd_log_level_t l, const char *tag, const char *job, const char *msg)
{
	char line[LINE_MAX_];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	/* The content stops 2 bytes short: "}" and "\n" always fit. */
	lb_t b = {line, 0, sizeof(line) - 2};
	if (atomic_load(&to_journal))
		lb_str(&b, prefixes[(unsigned)l < 4 ? l : 0]);
	if (atomic_load(&cur_format) == SD_LOG_JSON) {
		lb_str(&b, "{\"time\":\"");
		lb_time(&b, &ts);
		lb_str(&b, "\",\"level\":\"");
		lb_str(&b, sd_log_level_name(l));
		lb_str(&b, "\",\"component\":");
		lb_json(&b, tag);
		lb_str(&b, ",\"job\":");
		if (job)
			lb_json(&b, job);
		else
			lb_str(&b, "null");
		lb_str(&b, ",\"message\":");
		lb_json(&b, msg);
		b.cap = sizeof(line);
		lb_str(&b, "}");
	} else {
		lb_time(&b, &ts);
		lb_str(&b, " ");
		lb_str(&b, sd_log_level_name(l));
		lb_str(&b, " [");
		lb_text(&b, tag);
		lb_str(&b, "] ");
		if (job) {
			lb_str(&b, "job ");
			lb_text(&b, job);
			lb_str(&b, ": ");
		}
		lb_text(&b, msg);
		b.cap = sizeof(line);
	}
	lb_str(&b, "\n");
	ssize_t w = write(atomic_load(&cur_fd), line, b.len);
	(void)w;
}

void sd_log_write(sd_log_level_t l, const char *tag, const char *job, const char *fmt, ...)
{
	if (atomic_load(&dying))
		return;
	char msg[MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	emit(l, tag, job, msg);
}

/* ---- the last line on a fatal signal ---- */

static const struct {
	int sig;
	const char *name;
} fatal[] = {
	{SIGSEGV, "SIGSEGV"}, {SIGBUS, "SIGBUS"}, {SIGFPE, "SIGFPE"},
	{SIGILL, "SIGILL"},   {SIGABRT, "SIGABRT"},
};
#define N_FATAL (sizeof(fatal) / sizeof(fatal[0]))

static void on_fatal(int sig, siginfo_t *si, void *uctx)
{
	(void)uctx;
	int saved = errno;
	atomic_store(&dying, true);
	char msg[256];
	lb_t m = {msg, 0, sizeof(msg) - 1};
	lb_str(&m, "fatal signal ");
	for (size_t i = 0; i < N_FATAL; i++)
		if (fatal[i].sig == sig)
			lb_str(&m, fatal[i].name);
	/* si_code <= 0: sent (kill, tgkill, abort), not raised by a fault. */
	if (si->si_code <= 0 && si->si_pid == getpid()) {
		lb_str(&m, " raised by the process itself");
	} else if (si->si_code <= 0) {
		lb_str(&m, " sent by pid ");
		lb_uint(&m, (uint64_t)si->si_pid, 1);
	} else {
		lb_str(&m, " at address ");
		lb_hex(&m, (uint64_t)(uintptr_t)si->si_addr);
	}
	lb_str(&m, "; the process dies now, and jobs it was running are requeued at the "
		   "next start");
	msg[m.len] = 0;
	emit(SD_LOG_ERROR, "main", NULL, msg);
	/* SA_RESETHAND put the default action back; the raised signal stays pending until
	 * the handler returns, then kills the process as if no handler had been there (a
	 * faulting instruction would fault again, but a signal sent by kill would not). */
	raise(sig);
	errno = saved;
}

int sd_log_fatal_signals(void)
{
	/* A stack overflow on the main thread can only be reported from another stack. */
	static char altstack[64 * 1024];
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
	if (sigaltstack(&ss, NULL))
		return -errno;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fatal;
	sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < N_FATAL; i++)
		if (sigaction(fatal[i].sig, &sa, NULL))
			return -errno;
	return 0;
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
