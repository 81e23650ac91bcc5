/*
 * api_upload: POST /v1/jobs bodies to validated job forms (see api_upload.h).
 *
 * The multipart parser (api_mpart) hands each part here: a file part streams into a
 * blob of its own, a text part gathers into a bounded buffer. Nothing is decided about
 * the job until the body is complete (api_upload_finish), so an upload cut in the
 * middle leaves only blobs that api_upload_free removes.
 */
#include "api/api_upload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_mpart.h"
#include "common/sd_str.h"
#include "prune/graph.h"
#include "prune/layers.h"
#include "prune/stage.h"

/* The text parts: where each goes in the upload, and whether it may repeat. */
typedef enum text_field {
	T_STAGE,
	T_OUTPUTS,
	T_FORMAT,
	T_NAME,
	T_RECORD_FROM,
	T_EMIT_RECORD,
	T__COUNT
} text_field_t;

static const struct {
	const char *name;
	bool list; /* repeated parts are joined with ',' */
} text_parts[T__COUNT] = {
	[T_STAGE] = {"stage", false},           [T_OUTPUTS] = {"outputs", true},
	[T_FORMAT] = {"format", false},         [T_NAME] = {"name", false},
	[T_RECORD_FROM] = {"record_from", false}, [T_EMIT_RECORD] = {"emit_record", false},
};

static const char *const file_parts[API_FILE__COUNT] = {
	[API_FILE_MODEL] = "model", [API_FILE_CONFIG] = "config", [API_FILE_RECORD] = "record"};
static const char *const input_names[API_FILE__COUNT] = {
	[API_FILE_MODEL] = "input_model", [API_FILE_CONFIG] = "input_config",
	[API_FILE_RECORD] = "input_record"};

#define PART_LIST "stage, model, config, record, record_from, outputs, format, name, emit_record"

struct api_upload {
	store_t *store;
	int64_t max_bytes;
	bool uncached; /* files go around the page cache (store_blob_uncached) */
	api_mpart_t mp;
	/* the part being received: a file (blob != NULL) or a text field */
	store_blob_t *blob;
	int cur_file, cur_text;
	struct {
		char *buf;
		size_t len;
		bool seen;
	} text[T__COUNT];
	struct {
		store_blob_t *blob;
		bool seen;
	} file[API_FILE__COUNT];
};

static int part_begin(void *ud, const char *name, const char *filename, sd_error_t *e)
{
	(void)filename; /* a text part sent as a file (curl -F x=@f) is the same text */
	api_upload_t *u = ud;
	u->cur_file = u->cur_text = -1;
	for (int i = 0; i < API_FILE__COUNT; i++) {
		if (strcmp(name, file_parts[i]))
			continue;
		if (u->file[i].seen)
			return sd_err(e, SD_EUSAGE, "part '%s' given twice", name);
		u->file[i].seen = true;
		u->cur_file = i;
		int rc = store_blob_begin(u->store, u->max_bytes, &u->file[i].blob, e);
		if (!rc && u->uncached)
			store_blob_uncached(u->file[i].blob);
		return rc;
	}
	for (int i = 0; i < T__COUNT; i++) {
		if (strcmp(name, text_parts[i].name))
			continue;
		if (u->text[i].seen && !text_parts[i].list)
			return sd_err(e, SD_EUSAGE, "part '%s' given twice", name);
		if (u->text[i].seen) {
			/* The cap counts the joined list: a full first part and a second one
			 * must not leave part_data a negative room. */
			if (u->text[i].len >= API_UPLOAD_TEXT_MAX)
				return sd_err(e, SD_EUSAGE, "parts '%s' are longer than %d bytes "
							    "together",
					      name, API_UPLOAD_TEXT_MAX);
			char *t = realloc(u->text[i].buf, u->text[i].len + 2);
			if (!t)
				return sd_err(e, SD_ENOMEM, "out of memory");
			t[u->text[i].len++] = ',';
			t[u->text[i].len] = 0;
			u->text[i].buf = t;
		}
		u->text[i].seen = true;
		u->cur_text = i;
		return 0;
	}
	return sd_err(e, SD_EUSAGE, "unknown part '%s' (expected " PART_LIST ")", name);
}

static int part_data(void *ud, const char *data, size_t n, sd_error_t *e)
{
	api_upload_t *u = ud;
	if (u->cur_file >= 0)
		return store_blob_append(u->file[u->cur_file].blob, data, n, e);
	int i = u->cur_text;
	if (n > API_UPLOAD_TEXT_MAX - u->text[i].len)
		return sd_err(e, SD_EUSAGE, "part '%s' is longer than %d bytes",
			      text_parts[i].name, API_UPLOAD_TEXT_MAX);
	char *t = realloc(u->text[i].buf, u->text[i].len + n + 1);
	if (!t)
		return sd_err(e, SD_ENOMEM, "out of memory");
	memcpy(t + u->text[i].len, data, n);
	u->text[i].len += n;
	t[u->text[i].len] = 0;
	u->text[i].buf = t;
	return 0;
}

bool api_upload_ready(api_upload_t *u, size_t n, void (*wake)(void *), void *ud)
{
	/* The parser may hold back what could start a delimiter ("\r\n--" boundary) and
	 * hand it on with the next bytes: up to that much more than n reaches the blob. */
	size_t held = 4 + API_MPART_BOUNDARY_MAX;
	return u->cur_file < 0 || store_blob_ready(u->file[u->cur_file].blob, n + held, wake, ud);
}

/* A text part must show as JSON and as a log line: UTF-8, no NUL or control bytes. */
static int text_check(const api_upload_t *u, int i, sd_error_t *e)
{
	const char *t = u->text[i].buf;
	size_t n = u->text[i].len;
	if (!t)
		return 0;
	if (memchr(t, 0, n))
		return sd_err(e, SD_EUSAGE, "part '%s' holds a NUL byte", text_parts[i].name);
	if (!sd_utf8_valid(t, n))
		return sd_err(e, SD_EUSAGE, "part '%s' is not valid UTF-8", text_parts[i].name);
	for (size_t k = 0; k < n; k++)
		if ((unsigned char)t[k] < 0x20 || t[k] == 0x7f)
			return sd_err(e, SD_EUSAGE,
				      "part '%s' holds a control character (byte 0x%02x at %zu)",
				      text_parts[i].name, (unsigned char)t[k], k);
	return 0;
}

static int part_end(void *ud, sd_error_t *e)
{
	api_upload_t *u = ud;
	int rc = u->cur_text >= 0 ? text_check(u, u->cur_text, e) : 0;
	u->cur_file = u->cur_text = -1;
	return rc;
}

int api_upload_begin(store_t *s, int64_t max_bytes, bool uncached, const char *content_type,
		     api_upload_t **out, sd_error_t *e)
{
	*out = NULL;
	api_upload_t *u = calloc(1, sizeof(*u));
	if (!u)
		return sd_err(e, SD_ENOMEM, "out of memory");
	u->store = s;
	u->max_bytes = max_bytes;
	u->uncached = uncached;
	u->cur_file = u->cur_text = -1;
	static const api_mpart_cb_t cb = {part_begin, part_data, part_end};
	int rc = api_mpart_init(&u->mp, content_type, &cb, u, e);
	if (rc) {
		free(u);
		return rc;
	}
	*out = u;
	return 0;
}

int api_upload_feed(api_upload_t *u, const char *data, size_t n, sd_error_t *e)
{
	return api_mpart_feed(&u->mp, data, n, e);
}

static const char *text(const api_upload_t *u, text_field_t i) { return u->text[i].buf; }

int api_upload_finish(api_upload_t *u, api_form_t *f, sd_error_t *e)
{
	memset(f, 0, sizeof(*f));
	int rc = api_mpart_finish(&u->mp, e);
	if (rc)
		return rc;
	const char *stage = text(u, T_STAGE), *outputs = text(u, T_OUTPUTS);
	const char *format = text(u, T_FORMAT), *emit = text(u, T_EMIT_RECORD);
	const char *record_from = text(u, T_RECORD_FROM);
	for (int i = 0; i < API_FILE__COUNT; i++)
		f->has_file[i] = u->file[i].seen;
	if (!stage)
		return sd_err(e, SD_EUSAGE, "missing part 'stage' (%s)", prune_stage_list());
	prune_stage_t st;
	if ((rc = prune_stage_parse(stage, &st, e)))
		return rc;
	unsigned flags = prune_stage_flags(st);
	if (!f->has_file[API_FILE_MODEL])
		return sd_err(e, SD_EUSAGE, "missing part 'model' (the model file)");
	if ((flags & PRUNE_STAGE_NEEDS_CONFIG) && !f->has_file[API_FILE_CONFIG])
		return sd_err(e, SD_EUSAGE, "missing part 'config' (%s needs a config file)",
			      stage);
	bool has_record = f->has_file[API_FILE_RECORD], has_from = record_from && record_from[0];
	if ((flags & PRUNE_STAGE_NEEDS_RECORD) && has_record == has_from)
		return sd_err(e, SD_EUSAGE,
			      "%s needs exactly one of the parts 'record' and 'record_from'", stage);
	if ((flags & PRUNE_STAGE_NEEDS_OUTPUTS) && !(outputs && outputs[0]))
		return sd_err(e, SD_EUSAGE, "missing part 'outputs' (comma-separated node names)");
	if (outputs && outputs[0] && (rc = prune_outputs_check(outputs, e))) {
		sd_err_prefix(e, "part 'outputs'");
		return rc;
	}
	prune_format_t fmt = PRUNE_FMT_AUTO;
	if (format && format[0] && (rc = prune_format_parse(format, &fmt, e)))
		return rc;
	bool emit_record = false;
	if (emit && (rc = sd_bool_parse(emit, &emit_record, e))) {
		sd_err_prefix(e, "part 'emit_record'");
		return rc;
	}
	if (emit_record && !(flags & PRUNE_STAGE_MAY_RECORD))
		return sd_err(e, SD_EUSAGE, "emit_record is for stages that write a record on "
					    "request (prune); %s does not",
			      stage);
	f->stage_id = st;
	f->stage = stage;
	f->outputs = outputs;
	f->format = fmt != PRUNE_FMT_AUTO ? prune_format_name(fmt) : NULL; /* "pb" is "graphdef" */
	f->name = text(u, T_NAME);
	f->record_from = record_from && record_from[0] ? record_from : NULL;
	f->emit_record = emit_record;
	return 0;
}

int api_upload_commit(api_upload_t *u, store_artifact_t in[API_FILE__COUNT], size_t *n,
		      sd_error_t *e)
{
	*n = 0;
	for (int i = 0; i < API_FILE__COUNT; i++) {
		store_blob_t *b = u->file[i].blob;
		if (!b)
			continue;
		u->file[i].blob = NULL;
		store_artifact_t *a = &in[*n];
		memset(a, 0, sizeof(*a));
		int rc = store_blob_commit(b, a->sha256, &a->size, e);
		if (rc)
			return rc;
		snprintf(a->name, sizeof(a->name), "%s", input_names[i]);
		a->input = true;
		(*n)++;
	}
	return 0;
}

void api_upload_free(api_upload_t *u)
{
	if (!u)
		return;
	for (int i = 0; i < API_FILE__COUNT; i++)
		store_blob_abort(u->file[i].blob);
	for (int i = 0; i < T__COUNT; i++)
		free(u->text[i].buf);
	free(u);
}
