/*
 * api: the HTTP face of the daemon (libmicrohttpd), described by openapi.yaml.
 *
 * Threading (written down once): libmicrohttpd runs a small pool of event-driven
 * threads (MHD_USE_INTERNAL_POLLING_THREAD + epoll + a thread pool of http_threads).
 * Handlers on those threads read the store through a per-thread store_reader_t,
 * stream uploads into blobs (hashing and fsync happen here, never on the loop
 * thread), and hand every state change (create, cancel, delete) to the loop thread
 * through api_ops_t, which blocks the calling HTTP thread until the loop thread has
 * done it. Long-polls (?wait=) suspend their connection and hold no thread; the loop
 * thread resumes them through api_job_changed() and api_poll_expire().
 */
#ifndef API_H
#define API_H

#include <stdbool.h>
#include <stdint.h>

#include "common/sd_err.h"
#include "store/store.h"

typedef struct api api_t;

/* What the API needs from the daemon. Every callback may be called from any HTTP
 * thread; create/cancel/remove block until the loop thread has acted. */
typedef struct api_ops {
	void *ud;
	int (*create)(void *ud, const store_job_new_t *n, char id[STORE_ID_LEN + 1],
		      sd_error_t *e);
	/* Inputs committed for a job that will not be created (a later input failed):
	 * their blobs go unless a row names them. Blocks like create. */
	void (*release)(void *ud, const store_artifact_t *in, size_t n);
	int (*cancel)(void *ud, const char *id, const char *tenant, sd_error_t *e);
	int (*remove)(void *ud, const char *id, const char *tenant, sd_error_t *e);
	bool (*draining)(void *ud);
	/* Appends daemon-side metrics (Prometheus text) to *buf (malloc'd, grown). */
	void (*metrics)(void *ud, char **buf, size_t *len);
} api_ops_t;

typedef struct api_conf {
	const char *host;        /* numeric address to bind */
	int port;
	int threads;             /* HTTP thread pool size */
	int64_t max_upload;      /* bytes, whole request body */
	int max_connections;     /* client connections at once */
	int max_uploads;         /* request bodies streaming at once; 429 beyond */
	int idle_timeout;        /* seconds a connection may stay silent */
	bool access_log;         /* one info line per request (component "access") */
	int max_event_streams;   /* GET /v1/events streams at once; 503 beyond */
	int event_heartbeat;     /* seconds between heartbeat comments on a stream */
	const char *tls_cert;    /* PEM chain and key files: HTTPS when set, else HTTP */
	const char *tls_key;
	bool direct_uploads;     /* uploaded files bypass the page cache (store_blob_uncached) */
} api_conf_t;

/* Starts listening. Returns 0, SD_EIO (bind failed: e says why), SD_EUSAGE (a TLS
 * certificate or key that cannot be used: e names the file). Loop thread. */
SD_MUST_CHECK int api_start(const api_conf_t *c, store_t *s, const api_ops_t *ops,
			    api_t **out, sd_error_t *e);

/* Stops accepting, closes connections, joins the HTTP threads, frees. Loop thread. */
void api_stop(api_t *a);

/* The job changed (or was created): notes its version for the polls, wakes long-polls
 * waiting on it and sends the change to the event streams that see it. Loop thread,
 * right after the store committed the change (every change to a job row must be told
 * here: polls answer from what it notes), so events leave in the order of the changes. */
void api_job_changed(api_t *a, const char *id);

/* Jobs were deleted without api_job_deleted (the retention sweep): forgets every noted
 * version, so polls read the store again. Loop thread, right after the deletion. */
void api_jobs_swept(api_t *a);

/* The job j (as read just before) was deleted: wakes long-polls on it (they answer
 * 404) and sends a "deleted" event. Loop thread, right after store_job_delete. */
void api_job_deleted(api_t *a, const store_job_t *j);

/* Resumes long-polls whose deadline passed, and event streams due a heartbeat. Loop
 * thread, from a timer. */
void api_poll_expire(api_t *a);

/* Writes the token uses HTTP threads noted (each token's "last used", at most once a
 * minute per token) through the store's writer; failures are logged. Loop thread, from
 * a timer; api_stop writes the last ones. */
void api_token_uses_write(api_t *a);

/* Reads tls_cert and tls_key again (SIGHUP): new handshakes get the new pair,
 * connections already open keep theirs. All or nothing: on any error the pair in
 * service stays and e names the file and the cause (SD_EUSAGE, SD_ENOMEM). Returns 0
 * without doing anything when the API serves plain HTTP. Loop thread. */
SD_MUST_CHECK int api_tls_reload(sd_error_t *e);

/* Prints the route table ("METHOD PATH" lines) for the test that holds it against
 * openapi.yaml. */
void api_routes_print(void);

#endif
