/*
 * notify: tells the service manager what the daemon is doing, through the datagram
 * protocol sd_notify(3) documents (no libsystemd): one AF_UNIX datagram of
 * newline-separated VAR=VALUE assignments to the socket named by $NOTIFY_SOCKET, an
 * absolute path or, when it starts with '@', a Linux abstract socket.
 *
 * What the daemon sends, and when:
 *   READY=1       once it listens, and again when a reload is done;
 *   RELOADING=1   with MONOTONIC_USEC, when SIGHUP starts a reload;
 *   STOPPING=1    when SIGTERM/SIGINT starts the drain;
 *   WATCHDOG=1    every notify_watchdog_usec() / 2 from the event loop, so a loop that
 *                 hangs stops the pings and systemd restarts the service.
 * Without $NOTIFY_SOCKET every call does nothing and succeeds.
 *
 * Thread safety: notify_init and notify_deinit on the main thread, around everything
 * else; notify_send from any thread (one sendto on a connectionless socket).
 */
#ifndef NOTIFY_H
#define NOTIFY_H

#include <stdint.h>

#include "common/sd_err.h"

/*
 * Reads $NOTIFY_SOCKET and $WATCHDOG_USEC / $WATCHDOG_PID and opens the sending socket.
 * Returns 0 (also when the variables are unset), or SD_EUSAGE naming the variable that
 * is wrong (an address that is relative, too long or not AF_UNIX; a watchdog interval
 * that is not a number), or SD_EIO when no socket can be made. Whatever could be set up
 * stays usable: the daemon logs the error and runs on.
 */
SD_MUST_CHECK int notify_init(sd_error_t *e);

/* Closes the socket; later sends do nothing. */
void notify_deinit(void);

/*
 * Sends state (assignments separated by '\n', e.g. "READY=1\nSTATUS=listening") as one
 * datagram. Returns 0, or SD_EIO with the errno text (no service manager reading).
 */
SD_MUST_CHECK int notify_send(const char *state, sd_error_t *e);

/* "RELOADING=1" with MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>, which systemd >= 253
 * needs to match the reload it asked for. As notify_send. */
SD_MUST_CHECK int notify_reloading(sd_error_t *e);

/* The watchdog interval systemd expects pings within (WatchdogSec=), in µs, or 0 when
 * there is none or $WATCHDOG_PID names another process. */
uint64_t notify_watchdog_usec(void);

#endif
