/*
 * serve: `sparsityd serve`, the long-running daemon.
 *
 * One libuv loop owns the process (the_daemon): signals (SIGTERM/SIGINT drain and
 * stop, SIGHUP reopens the log and reloads settings), timers (retention sweeps,
 * long-poll deadlines), the job scheduler, and every write to the store. Stages run on
 * libuv's thread pool (uv_queue_work, pool size = workers); the HTTP threads and the
 * workers reach the loop only through uv_async_send. Handles are embedded in
 * the_daemon and closed in one place before the loop exits.
 */
#ifndef SERVE_H
#define SERVE_H

/* Returns the process exit status. */
int serve_main(int argc, char **argv);

#endif
