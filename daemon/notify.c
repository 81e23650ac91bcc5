/*
 * notify: sd_notify's datagram protocol, spoken directly (see notify.h).
 *
 * Why not libsystemd: the protocol is a stable interface of a few lines (one datagram
 * to an AF_UNIX address), and the daemon must build and run where libsystemd is absent
 * (containers, the fuzz and sanitizer builds). The socket is made once at start and
 * used with sendto, so sending needs no lock and cannot block on a full queue
 * (MSG_DONTWAIT): a service manager that stops reading costs a notification, never a
 * stalled event loop.
 */
#include "daemon/notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static struct {
	int fd; /* -1: no service manager to tell */
	struct sockaddr_un addr;
	socklen_t addr_len;
	uint64_t watchdog_usec;
} the_notify = {.fd = -1};

/* Fills the_notify.addr from $NOTIFY_SOCKET. Returns 1 when there is an address, 0
 * when the variable is unset or empty, or SD_EUSAGE. */
static int parse_address(const char *v, sd_error_t *e)
{
	if (!v || !v[0])
		return 0;
	struct sockaddr_un *a = &the_notify.addr;
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	size_t n = strlen(v);
	if (v[0] != '/' && v[0] != '@')
		return sd_err(e, SD_EUSAGE,
			      "NOTIFY_SOCKET '%s' is neither an absolute path nor an abstract socket "
			      "(@name); other transports (vsock) are not supported", v);
	/* A path needs its NUL inside sun_path; an abstract name uses every byte. */
	if (n > sizeof(a->sun_path) - (v[0] == '/'))
		return sd_err(e, SD_EUSAGE, "NOTIFY_SOCKET is %zu bytes, longer than an AF_UNIX "
			      "address can be (%zu)", n, sizeof(a->sun_path));
	memcpy(a->sun_path, v, n);
	if (v[0] == '@')
		a->sun_path[0] = '\0';
	the_notify.addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	return 1;
}

static int parse_watchdog(sd_error_t *e)
{
	const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
	the_notify.watchdog_usec = 0;
	if (!usec || !usec[0])
		return 0;
	char *end;
	errno = 0;
	unsigned long long u = strtoull(usec, &end, 10);
	if (errno || *end || u == 0 || usec[0] == '-')
		return sd_err(e, SD_EUSAGE, "WATCHDOG_USEC '%s' is not a positive number of "
			      "microseconds; no watchdog pings", usec);
	/* The variables are inherited: a watchdog meant for a parent is not ours. */
	if (pid && pid[0]) {
		errno = 0;
		long long p = strtoll(pid, &end, 10);
		if (errno || *end || p != (long long)getpid())
			return 0;
	}
	the_notify.watchdog_usec = u;
	return 0;
}

int notify_init(sd_error_t *e)
{
	notify_deinit();
	int rc = parse_address(getenv("NOTIFY_SOCKET"), e);
	if (rc < 0)
		return rc;
	if (rc == 1) {
		the_notify.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (the_notify.fd < 0)
			return sd_err(e, SD_EIO, "cannot make the notify socket: %s", strerror(errno));
	}
	return parse_watchdog(e);
}

void notify_deinit(void)
{
	if (the_notify.fd >= 0)
		close(the_notify.fd);
	the_notify.fd = -1;
}

int notify_send(const char *state, sd_error_t *e)
{
	if (the_notify.fd < 0)
		return 0;
	ssize_t n = sendto(the_notify.fd, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT,
			   (const struct sockaddr *)&the_notify.addr, the_notify.addr_len);
	if (n < 0)
		return sd_err(e, SD_EIO, "cannot tell the service manager '%.*s': %s",
			      (int)strcspn(state, "\n"), state, strerror(errno));
	return 0;
}

int notify_reloading(sd_error_t *e)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	char msg[96];
	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
		 (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
	return notify_send(msg, e);
}

uint64_t notify_watchdog_usec(void) { return the_notify.watchdog_usec; }
