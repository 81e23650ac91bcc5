/*
 * api_events: GET /v1/events, job changes pushed as Server-Sent Events (see api_int.h).
 *
 * Glossary.
 *   event    one job change as the stream sends it: "id: N\nevent: job\ndata: {...}\n\n".
 *            N is the version the change took in the store (the global counter behind
 *            every ETag), so ids increase strictly across jobs, and the ETag a client
 *            reads after event N is "<job>-vN" or later.
 *   ring     the last EV_RING events, in memory, shared by every stream. A stream is a
 *            cursor into it (the sequence number of the next event to look at), so an
 *            idle stream costs a few hundred bytes whatever the traffic.
 *   floor    the largest event id no longer in the ring (at start: the counter's value,
 *            since earlier changes were never in memory). A Last-Event-ID at or above
 *            the floor is replayed exactly; an older one, or one this daemon never
 *            gave, gets an "event: reset" telling the client to reload what it shows.
 *
 * Threads. The loop thread is the only producer: api_job_changed and api_job_deleted
 * run there, right after the store committed the change, and read the job through
 * this module's own reader. HTTP threads run the content reader of each stream. One
 * mutex (ev->mu) guards the ring, the cursors and the list of sleeping streams.
 *
 * Flow control. A stream with nothing to send suspends its connection from its
 * content reader (libmicrohttpd's way to avoid busy polling) and waits in the sleeper
 * list; the producer resumes the sleepers an event concerns (other tenants' sleepers
 * just have their cursor moved on), and the heartbeat tick resumes all of them. A
 * reader that stops reading is never waited for: libmicrohttpd stops asking its
 * content reader once the socket is full, the producer goes on writing the ring, and
 * the connection is closed when nothing could be written for twice the heartbeat
 * interval (its own timeout), or when its cursor is found overwritten by the ring.
 * Neither a worker, the loop nor an HTTP thread ever blocks on a client.
 *
 * Workload: a few events per job (created, running, progress steps, outcome, delete),
 * up to max_event_streams idle streams; a heartbeat every event_heartbeat seconds.
 */
#include "api/api_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "common/sd_log.h"
#include "common/sd_time.h"
#include "api/api_json.h"
#include "api/api_json_job.h"

/* Events kept for replay after a reconnect (3.6 MiB once full). */
#define EV_RING 4096
/* One event's text: about 450 bytes without the name, which gets what is left. */
#define EV_TEXT_MAX 768
#define EV_TENANT_MAX 128
/* libmicrohttpd's buffer per write; events are a few hundred bytes. */
#define EV_BLOCK 2048
/* What a client should wait before reconnecting, sent once at the start. */
#define EV_RETRY_MS 3000
/* The kernel's send buffer of a stream's socket (it doubles it): what a client that
 * stops reading can hold up before its stream stalls and its timeout runs. */
#define EV_SNDBUF (32 << 10)
/* How long api_stop waits for streams to send their end. */
#define EV_STOP_GRACE_MS 2000

typedef struct ev {
	int64_t id;
	char tenant[EV_TENANT_MAX];
	char text[EV_TEXT_MAX];
	size_t len;
} ev_t;

typedef struct stream stream_t;

struct stream {
	api_t *api;
	api_events_t *ev;
	struct MHD_Connection *conn;
	char *tenant;        /* NULL: every job (no tokens in force) */
	char *auth;          /* the Authorization it was opened with; NULL without tokens */
	int64_t checked_ms;  /* when its access was last checked */
	uint64_t next;       /* sequence number of the next ring event to look at */
	uint64_t hb_gen;     /* heartbeats sent up to this generation */
	bool hello;          /* the opening comment and retry: line are out */
	bool reset;          /* Last-Event-ID could not be replayed: say so first */
	bool drop;           /* fell behind the ring: end with an error */
	bool asleep;         /* suspended, in ev->sleepers */
	stream_t *prev, *nxt;
	char pend[EV_TEXT_MAX + 96];
	size_t pend_len, pend_off;
};

struct api_events {
	pthread_mutex_t mu;
	pthread_cond_t gone;  /* streams went down to 0 while stopping */
	ev_t *ring;
	uint64_t head;        /* sequence number of the next event */
	int64_t floor;        /* largest id no longer in the ring */
	int64_t last_id;      /* id of the last event (floor when none) */
	uint64_t hb_gen;
	int64_t hb_next_ms;
	stream_t *sleepers;
	int streams;          /* open streams (their responses are alive) */
	bool stopping;
	int max_streams;
	int heartbeat_s;
	store_reader_t *reader; /* loop thread */
};

/* ---- the stream's side (HTTP threads) ---- */

static void set_pend(stream_t *s, const char *text, size_t len)
{
	memcpy(s->pend, text, len);
	s->pend_len = len;
	s->pend_off = 0;
}

static bool tenant_sees(const char *stream_tenant, const char *job_tenant)
{
	return !stream_tenant || !strcmp(stream_tenant, job_tenant);
}

/* Puts the next thing s should send into s->pend; false when there is none. ev->mu. */
static bool stage_next(api_events_t *ev, stream_t *s)
{
	if (s->drop)
		return false;
	if (!s->hello) {
		s->hello = true;
		int n = snprintf(s->pend, sizeof(s->pend), ": sparsityd events\nretry: %d\n\n",
				 EV_RETRY_MS);
		s->pend_len = (size_t)n;
		s->pend_off = 0;
		return true;
	}
	if (s->reset) {
		s->reset = false;
		/* The id lets the client's next reconnect resume from here. */
		int n = snprintf(s->pend, sizeof(s->pend),
				 "id: %" PRId64 "\nevent: reset\ndata: {\"reason\":\"the events after "
				 "Last-Event-ID are no longer kept; reload the jobs\"}\n\n",
				 ev->last_id);
		s->pend_len = (size_t)n;
		s->pend_off = 0;
		return true;
	}
	while (s->next < ev->head) {
		if (ev->head - s->next > EV_RING) {
			s->drop = true;
			log_warn("api", "event stream dropped: the client fell %" PRIu64
				 " events behind (more than the %d kept)", ev->head - s->next, EV_RING);
			return false;
		}
		const ev_t *x = &ev->ring[s->next++ % EV_RING];
		if (tenant_sees(s->tenant, x->tenant)) {
			set_pend(s, x->text, x->len);
			return true;
		}
	}
	if (s->hb_gen < ev->hb_gen) {
		s->hb_gen = ev->hb_gen;
		set_pend(s, ": hb\n\n", 6);
		return true;
	}
	return false;
}

static void sleeper_unlink(api_events_t *ev, stream_t *s)
{
	if (s->prev)
		s->prev->nxt = s->nxt;
	else
		ev->sleepers = s->nxt;
	if (s->nxt)
		s->nxt->prev = s->prev;
	s->prev = s->nxt = NULL;
	s->asleep = false;
}

static void wake(api_events_t *ev, stream_t *s)
{
	sleeper_unlink(ev, s);
	MHD_resume_connection(s->conn);
}

/*
 * Whether the stream may still be read, by the rule a request meets (api__token_access):
 * its token neither revoked nor expired, or, opened while no token existed, still none.
 * A request is authorised once, but a stream lasts, so this is asked again every
 * heartbeat interval (HTTP thread). A store that cannot be read keeps the stream: the
 * next check decides.
 */
static bool still_allowed(stream_t *s)
{
	int64_t now = sd_now_ms();
	if (now - s->checked_ms < 1000 * (int64_t)s->ev->heartbeat_s)
		return true;
	s->checked_ms = now;
	sd_error_t e;
	store_token_t t;
	int rc = api__token_access(s->api, s->auth, now, &t, &e);
	store_token_clear(&t);
	if (rc == SD_EAUTH) {
		log_info("api", "event stream of tenant %s ended: %s", s->tenant ? s->tenant : "-",
			 e.msg);
		return false;
	}
	if (rc)
		log_warn("api", "event stream: access not checked: %s", e.msg);
	return true;
}

/*
 * libmicrohttpd asks for the stream's next bytes whenever its write buffer is empty.
 * Nothing to send: the connection is suspended (returning 0 without it would make
 * libmicrohttpd ask again at once) until the producer or the heartbeat resumes it.
 */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	stream_t *s = cls;
	api_events_t *ev = s->ev;
	size_t n = 0;
	if (!still_allowed(s))
		return MHD_CONTENT_READER_END_WITH_ERROR;
	pthread_mutex_lock(&ev->mu);
	while (n < max) {
		if (s->pend_off == s->pend_len && !stage_next(ev, s))
			break;
		size_t k = s->pend_len - s->pend_off;
		if (k > max - n)
			k = max - n;
		memcpy(buf + n, s->pend + s->pend_off, k);
		s->pend_off += k;
		n += k;
	}
	ssize_t ret = (ssize_t)n;
	if (!n && s->drop)
		ret = MHD_CONTENT_READER_END_WITH_ERROR;
	else if (!n && ev->stopping)
		ret = MHD_CONTENT_READER_END_OF_STREAM;
	else if (!n) {
		s->asleep = true;
		s->prev = NULL;
		s->nxt = ev->sleepers;
		if (ev->sleepers)
			ev->sleepers->prev = s;
		ev->sleepers = s;
		MHD_suspend_connection(s->conn);
	}
	pthread_mutex_unlock(&ev->mu);
	return ret;
}

/* The response is gone (its connection finished or closed): the stream goes too. */
static void stream_free(void *cls)
{
	stream_t *s = cls;
	api_events_t *ev = s->ev;
	pthread_mutex_lock(&ev->mu);
	if (s->asleep)
		sleeper_unlink(ev, s); /* only a daemon stopping without api_stop gets here */
	if (--ev->streams == 0 && ev->stopping)
		pthread_cond_broadcast(&ev->gone);
	pthread_mutex_unlock(&ev->mu);
	free(s->tenant);
	if (s->auth)
		explicit_bzero(s->auth, strlen(s->auth));
	free(s->auth);
	free(s);
}

/* Last-Event-ID: the decimal id of an event this stream sent; -1 when absent. */
static bool last_event_id(const char *v, int64_t *out)
{
	*out = -1;
	if (!v || !v[0])
		return true;
	size_t len = strlen(v);
	if (len > 18 || strspn(v, "0123456789") != len)
		return false;
	*out = strtoll(v, NULL, 10);
	return true;
}

/* Where a stream resuming after `after` starts; sets s->reset when it cannot. ev->mu. */
static void resume_point(api_events_t *ev, stream_t *s, int64_t after)
{
	s->next = ev->head;
	if (after < 0)
		return; /* a new client: from now on */
	if (after < ev->floor || after > ev->last_id) {
		s->reset = true;
		return;
	}
	/* Ids increase with the sequence: the first one past `after`, by bisection. */
	uint64_t lo = ev->head > EV_RING ? ev->head - EV_RING : 0, hi = ev->head;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (ev->ring[mid % EV_RING].id <= after)
			lo = mid + 1;
		else
			hi = mid;
	}
	s->next = lo;
}

static void stream_headers(struct MHD_Response *resp)
{
	MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
	MHD_add_response_header(resp, "Cache-Control", "no-cache, no-store");
	/* nginx would otherwise hold events back in its proxy buffer. */
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
}

int api__h_events(api_t *a, req_t *r, struct MHD_Connection *c)
{
	api_events_t *ev = a->ev;
	int64_t after;
	if (!last_event_id(api__header(c, "Last-Event-ID"), &after))
		return api__fail(a, r, c, SD_EUSAGE,
				 "Last-Event-ID must be the id of an event (a whole number)");
	/* HEAD gets the headers from an empty response: libmicrohttpd would end a streamed
	 * one with the last chunk (0 CRLF CRLF) even for HEAD, bytes that a keep-alive
	 * client would read as the start of its next answer. */
	if (r->method == API__M_HEAD) {
		struct MHD_Response *resp =
			MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
		if (resp)
			stream_headers(resp);
		return api__queue(a, r, c, 200, resp, 0);
	}
	stream_t *s = calloc(1, sizeof(*s));
	const char *h = r->tenant ? api__header(c, "Authorization") : NULL;
	if (!s || (r->tenant && !(s->tenant = strdup(r->tenant))) || (h && !(s->auth = strdup(h)))) {
		if (s)
			free(s->tenant);
		free(s);
		return MHD_NO;
	}
	s->api = a;
	s->ev = ev;
	s->conn = c;
	s->checked_ms = sd_now_ms();
	pthread_mutex_lock(&ev->mu);
	bool stopping = ev->stopping, full = ev->streams >= ev->max_streams;
	if (!stopping && !full) {
		ev->streams++;
		resume_point(ev, s, after);
		s->hb_gen = ev->hb_gen;
	}
	pthread_mutex_unlock(&ev->mu);
	if (stopping || full) {
		free(s->tenant);
		free(s->auth);
		free(s);
		sd_error_t e;
		if (stopping)
			sd_err(&e, SD_EUNAVAIL, "the daemon is stopping");
		else
			sd_err(&e, SD_EUNAVAIL,
			       "%d event streams are open (max_event_streams); retry later, or "
			       "long-poll GET /v1/jobs/{id}?wait=",
			       ev->max_streams);
		size_t len = 0;
		struct MHD_Response *resp = api__problem_response(&e, 503, &len);
		if (resp)
			MHD_add_response_header(resp, "Retry-After", "5");
		return api__queue(a, r, c, 503, resp, len);
	}
	/* From here on, the response owns s (stream_free). */
	struct MHD_Response *resp =
		MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, EV_BLOCK, stream_read, s,
						  stream_free);
	if (!resp) {
		stream_free(s);
		return MHD_NO;
	}
	stream_headers(resp);
	/* A heartbeat every interval keeps a reading client's connection active; one that
	 * could not take a byte for two intervals has stopped reading, and goes. */
	MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
				  (unsigned)(2 * ev->heartbeat_s));
	/* Unset, the kernel grows a socket's send buffer to megabytes, so a client that
	 * stopped reading would keep its stream looking alive for thousands of events. */
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	int sndbuf = EV_SNDBUF;
	if (ci && setsockopt(ci->connect_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)))
		log_debug("api", "event stream: SO_SNDBUF not set: %s", strerror(errno));
	return api__queue(a, r, c, 200, resp, 0);
}

/* ---- the producer's side (loop thread) ---- */

/*
 * The event's text: the job's list-row members (api_json_job_head) with version and
 * deleted, so a page updates its list from the event alone. A name too long for an
 * event is left out (the client fetches the job for it). 0 when the row cannot be an
 * event, which only a row written by something else than the API can cause.
 */
static size_t event_text(const store_job_t *j, int64_t id, bool deleted, char *buf,
			 size_t cap)
{
	int head = snprintf(buf, cap, "id: %" PRId64 "\nevent: job\ndata: ", id);
	json_t *o = store_id_valid(j->id) ? api_json_job_head(j) : NULL;
	char version[STORE_ID_LEN + 24];
	snprintf(version, sizeof(version), "%s-v%" PRId64, j->id, id);
	size_t n = 0;
	if (o && !json_object_set_new(o, "version", json_string(version)) &&
	    !json_object_set_new(o, "deleted", json_boolean(deleted))) {
		size_t room = cap - (size_t)head - 2;
		n = json_dumpb(o, buf + head, room, JSON_COMPACT);
		if (n > room && !json_object_del(o, "name"))
			n = json_dumpb(o, buf + head, room, JSON_COMPACT);
		n = n && n <= room ? n : 0;
	}
	json_decref(o);
	if (!n)
		return 0;
	memcpy(buf + head + n, "\n\n", 2);
	return (size_t)head + n + 2;
}

/* Appends one event and wakes the sleepers it concerns. */
static void push(api_events_t *ev, const store_job_t *j, int64_t id, bool deleted)
{
	ev_t x = {.id = id};
	snprintf(x.tenant, sizeof(x.tenant), "%s", j->tenant ? j->tenant : "");
	x.len = event_text(j, id, deleted, x.text, sizeof(x.text));
	if (!x.len || strlen(x.tenant) != strlen(j->tenant ? j->tenant : "")) {
		log_warn("api", "no event for job %.64s: its row does not fit an event", j->id);
		return;
	}
	pthread_mutex_lock(&ev->mu);
	ev_t *slot = &ev->ring[ev->head % EV_RING];
	if (ev->head >= EV_RING)
		ev->floor = slot->id;
	*slot = x;
	ev->head++;
	ev->last_id = id;
	for (stream_t *s = ev->sleepers, *nx; s; s = nx) {
		nx = s->nxt;
		if (tenant_sees(s->tenant, x.tenant))
			wake(ev, s);
		else
			s->next = ev->head; /* asleep means it had looked at everything before */
	}
	pthread_mutex_unlock(&ev->mu);
}

int api__events_job(api_t *a, const char *id, store_job_t *j)
{
	api_events_t *ev = a->ev;
	sd_error_t e;
	int rc = store_job_get(ev->reader, id, NULL, j, &e);
	/* Gone: api_job_deleted announces deletions, with what the row said. A version
	 * already sent: a wake-up without a new change. */
	if (!rc && j->version > ev->last_id)
		push(ev, j, j->version, false);
	else if (rc && rc != SD_ENOTFOUND)
		jlog_warn("api", id, "no event for this change: %s", e.msg);
	return rc;
}

void api_job_deleted(api_t *a, const store_job_t *j)
{
	api_job_changed(a, j->id); /* long-polls on it answer 404 now */
	int64_t v;
	sd_error_t e;
	if (store_version_current(a->ev->reader, &v, &e))
		jlog_warn("api", j->id, "no event for the deletion: %s", e.msg);
	else if (v > a->ev->last_id)
		push(a->ev, j, v, true);
}

int api__events_open(api_t *a)
{
	pthread_mutex_lock(&a->ev->mu);
	int n = a->ev->streams;
	pthread_mutex_unlock(&a->ev->mu);
	return n;
}

void api__events_tick(api_t *a)
{
	api_events_t *ev = a->ev;
	int64_t now = sd_now_ms();
	if (now < ev->hb_next_ms)
		return;
	ev->hb_next_ms = now + 1000 * (int64_t)ev->heartbeat_s;
	pthread_mutex_lock(&ev->mu);
	ev->hb_gen++;
	while (ev->sleepers)
		wake(ev, ev->sleepers);
	pthread_mutex_unlock(&ev->mu);
}

/* ---- life cycle (loop thread) ---- */

int api__events_start(api_t *a, sd_error_t *e)
{
	api_events_t *ev = calloc(1, sizeof(*ev));
	ev_t *ring = calloc(EV_RING, sizeof(*ring));
	if (!ev || !ring) {
		free(ev);
		free(ring);
		return sd_err(e, SD_ENOMEM, "out of memory");
	}
	ev->ring = ring;
	ev->max_streams = a->conf.max_event_streams;
	ev->heartbeat_s = a->conf.event_heartbeat;
	int rc = store_reader_open(a->store, &ev->reader, e);
	/* Every change so far precedes this process: none of them can be replayed. */
	if (!rc && (rc = store_version_current(ev->reader, &ev->floor, e)) != 0)
		store_reader_close(ev->reader);
	if (rc) {
		free(ring);
		free(ev);
		return rc;
	}
	ev->last_id = ev->floor;
	ev->hb_next_ms = sd_now_ms() + 1000 * (int64_t)ev->heartbeat_s;
	pthread_mutex_init(&ev->mu, NULL);
	pthread_cond_init(&ev->gone, NULL);
	a->ev = ev;
	return 0;
}

void api__events_end(api_t *a)
{
	api_events_t *ev = a->ev;
	if (!ev)
		return;
	pthread_mutex_lock(&ev->mu);
	ev->stopping = true;
	/* libmicrohttpd must not stop with a connection suspended; resumed, each stream
	 * sends what it has and its end. */
	while (ev->sleepers)
		wake(ev, ev->sleepers);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += EV_STOP_GRACE_MS / 1000;
	while (ev->streams > 0 && pthread_cond_timedwait(&ev->gone, &ev->mu, &until) == 0)
		;
	/* A stream whose client stopped reading may still be open: it is not suspended,
	 * and stopping the server closes it. */
	pthread_mutex_unlock(&ev->mu);
}

void api__events_free(api_t *a)
{
	api_events_t *ev = a->ev;
	if (!ev)
		return;
	store_reader_close(ev->reader);
	pthread_cond_destroy(&ev->gone);
	pthread_mutex_destroy(&ev->mu);
	free(ev->ring);
	free(ev);
	a->ev = NULL;
}
