/*
 * store_hash: the shared pool of threads that write and hash blobs (see store_int.h).
 *
 * Design. A blob that streams in hands each filled buffer to the pool instead of to a
 * thread of its own, so the number of threads is fixed (hash_threads) however many
 * uploads are in flight, and the thread that fills the buffers (an HTTP thread, for an
 * upload) never waits on the disk: a write that the kernel throttles, or a writeback
 * request that waits for the device's queue, stalls a pool thread instead of every
 * connection that HTTP thread serves. Nor does it wait for a free buffer: it asks
 * store__hash_ready first and, when the ring is full, suspends its connection until the
 * pool's wake-up (api__upload_wait).
 *
 * Each stream has two lanes, each taking the stream's buffers in order: one writes them
 * to the file, one hashes them (SHA-256 is sequential, and so is the file). A lane is
 * queued while it has buffers waiting and no thread holds it; a thread takes a lane,
 * does one buffer, and puts the lane back at the tail if more wait, so a fast upload
 * cannot starve the others, and one blob's writing and hashing run on two cores at
 * once. A buffer is free again once both lanes are past it. One mutex guards the queue
 * and every stream's counters (a handful of operations per buffer of 512 KiB or more). Without a
 * pool (tests) the caller writes and hashes each buffer itself.
 *
 * Workload: uploads and stage outputs, MB to GB, at up to a few GB/s in total.
 */
#include "store/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

struct store__hashpool {
	pthread_mutex_t mu;
	pthread_cond_t work;
	store__lane_t *head, *tail; /* lanes with buffers waiting and no thread */
	bool stop;
	int n;
	pthread_t th[];
};

/* Writeback is started every this many bytes, so the fsync at commit finds little left
 * to write instead of the whole blob. */
#define WRITEBACK_STEP ((int64_t)32 << 20)

/* Takes O_DIRECT off the stream's file (write lane); false, errno set, if refused. */
static bool drop_direct(store__hstream_t *h)
{
	h->direct = false;
	int fl = fcntl(h->fd, F_GETFL);
	return fl >= 0 && fcntl(h->fd, F_SETFL, fl & ~O_DIRECT) == 0;
}

/* Writes buf to the stream's file (write lane); returns 0 or the errno. After a
 * failure (h->werr, set under the pool's mutex) the rest is skipped: the blob is
 * refused at its next append or at commit. */
static int lane_write(store__hstream_t *h, const unsigned char *p, size_t n)
{
	if (h->werr)
		return 0;
	/* O_DIRECT takes whole blocks from aligned memory at aligned offsets: the ring's
	 * full buffers. The last, partial one (or a file system that refuses) goes
	 * through the page cache; the commit's fsync covers both. */
	if (h->direct && (n % STORE__DIRECT_ALIGN || h->written % STORE__DIRECT_ALIGN) &&
	    !drop_direct(h))
		return errno;
	while (n > 0) {
		ssize_t w = write(h->fd, p, n);
		if (w < 0) {
			int err = errno;
			if (err == EINTR || (err == EINVAL && h->direct && drop_direct(h)))
				continue;
			return err;
		}
		p += w;
		n -= (size_t)w;
		h->written += w;
	}
	if (!h->direct && h->written - h->flushed >= WRITEBACK_STEP) {
		/* Only queues the pages for writing; it may wait for the device's queue. */
		sync_file_range(h->fd, h->flushed, h->written - h->flushed, SYNC_FILE_RANGE_WRITE);
		h->flushed = h->written;
	}
	return 0;
}

static void lane_hash(store__hstream_t *h, const unsigned char *p, size_t n)
{
	h->failed |= EVP_DigestUpdate(h->md, p, n) != 1;
}

/* Puts l at the tail of the lanes waiting for a thread; p->mu held. */
static void enqueue(store__hashpool_t *p, store__lane_t *l)
{
	l->queued = true;
	l->next = NULL;
	if (p->tail)
		p->tail->next = l;
	else
		p->head = l;
	p->tail = l;
}

/* Queues l if it has buffers waiting and is neither queued nor held; p->mu held. */
static void kick(store__hashpool_t *p, store__lane_t *l)
{
	if (!l->queued && !l->active && l->done < l->h->submitted) {
		enqueue(p, l);
		pthread_cond_signal(&p->work);
	}
}

/* Buffers handed over that some lane has not finished; p->mu held. */
static int64_t in_flight(const store__hstream_t *h)
{
	int64_t low = h->write.done < h->hash.done ? h->write.done : h->hash.done;
	return h->submitted - low;
}

static void *pool_main(void *arg)
{
	store__hashpool_t *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->head && !p->stop)
			pthread_cond_wait(&p->work, &p->mu);
		store__lane_t *l = p->head;
		if (!l)
			break;
		p->head = l->next;
		if (!p->head)
			p->tail = NULL;
		l->queued = false;
		l->active = true;
		store__hstream_t *h = l->h;
		int i = (int)(l->done % STORE__HASH_RING);
		pthread_mutex_unlock(&p->mu);
		int err = 0;
		if (l == &h->write)
			err = lane_write(h, h->buf[i], h->len[i]);
		else
			lane_hash(h, h->buf[i], h->len[i]);
		pthread_mutex_lock(&p->mu);
		if (err)
			h->werr = err;
		l->done++;
		l->active = false;
		kick(p, l);
		pthread_cond_broadcast(&h->cv);
		void (*wake)(void *) = h->wake;
		if (wake && in_flight(h) < h->wake_at) {
			void *ud = h->wake_ud;
			h->wake = NULL;
			/* Unlocked: the callee takes its own locks (an HTTP server's), and the
			 * stream may be freed once it has been woken. */
			pthread_mutex_unlock(&p->mu);
			wake(ud);
			pthread_mutex_lock(&p->mu);
		}
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int store__hashpool_start(store__hashpool_t **out, int threads, sd_error_t *e)
{
	store__hashpool_t *p = calloc(1, sizeof(*p) + (size_t)threads * sizeof(pthread_t));
	if (!p)
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work, NULL);
	for (; p->n < threads; p->n++) {
		if (pthread_create(&p->th[p->n], NULL, pool_main, p) != 0) {
			store__hashpool_stop(p);
			return sd_err(e, SD_EINTERNAL, "store: cannot start hashing threads");
		}
	}
	*out = p;
	return 0;
}

void store__hashpool_stop(store__hashpool_t *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n; i++)
		pthread_join(p->th[i], NULL);
	pthread_cond_destroy(&p->work);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

void store__hstream_init(store__hstream_t *h, EVP_MD_CTX *md, int fd)
{
	*h = (store__hstream_t){.md = md, .fd = fd};
	h->write.h = h->hash.h = h;
	pthread_cond_init(&h->cv, NULL);
}

void store__hstream_deinit(store__hstream_t *h)
{
	pthread_cond_destroy(&h->cv);
}

int store__hash_submit(store__hashpool_t *p, store__hstream_t *h, const unsigned char *buf,
		       size_t len)
{
	if (!p) {
		int err = lane_write(h, buf, len);
		if (err)
			h->werr = err;
		lane_hash(h, buf, len);
		h->submitted = ++h->write.done;
		h->hash.done++;
		return h->werr;
	}
	pthread_mutex_lock(&p->mu);
	int slot = (int)(h->submitted % STORE__HASH_RING);
	h->buf[slot] = buf;
	h->len[slot] = len;
	h->submitted++;
	kick(p, &h->write);
	kick(p, &h->hash);
	/* Buffers are handed over in ring order, so once fewer than all are in flight the
	 * caller's next buffer is free to fill. */
	while (in_flight(h) == STORE__HASH_RING)
		pthread_cond_wait(&h->cv, &p->mu);
	int werr = h->werr;
	pthread_mutex_unlock(&p->mu);
	return werr;
}

bool store__hash_ready(store__hashpool_t *p, store__hstream_t *h, int64_t k,
		       void (*wake)(void *), void *ud)
{
	if (!p)
		return true;
	pthread_mutex_lock(&p->mu);
	int64_t busy = in_flight(h);
	bool ready = busy + k < STORE__HASH_RING;
	if (!ready) {
		h->wake = wake;
		h->wake_ud = ud;
		h->wake_at = busy;
	}
	pthread_mutex_unlock(&p->mu);
	return ready;
}

int store__hash_wait(store__hashpool_t *p, store__hstream_t *h)
{
	if (!p)
		return h->werr;
	pthread_mutex_lock(&p->mu);
	while (in_flight(h))
		pthread_cond_wait(&h->cv, &p->mu);
	int werr = h->werr;
	pthread_mutex_unlock(&p->mu);
	return werr;
}
