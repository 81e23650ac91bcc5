/*
 * conf: the daemon's settings, from one table.
 *
 * The table (CONF_MAP in conf.c) lists each setting once with its type, default,
 * range, whether SIGHUP reloads it, and its help text; it feeds the command-line
 * flags (--data-dir for data_dir), the config file (`data_dir = ./var` lines, #
 * comments), --print-config and the README's settings section.
 */
#ifndef CONF_H
#define CONF_H

#include <stdbool.h>
#include <stdint.h>

#include "common/sd_err.h"

typedef struct conf {
	char listen[128];
	char tls_cert[1024];
	char tls_key[1024];
	char data_dir[1024];
	int64_t workers;
	int64_t http_threads;
	int64_t max_upload;
	int64_t max_connections;
	int64_t max_uploads;
	int64_t hash_threads;
	bool direct_uploads;
	int64_t idle_timeout;
	int64_t max_event_streams;
	int64_t event_heartbeat;
	int64_t queue_max;
	int64_t max_attempts;
	int64_t retention_hours;
	char log_level[16];
	char log_file[1024];
	char log_format[8];
	bool access_log;
	bool insecure;
	char config[1024];   /* the file the settings came from, "" if none */
} conf_t;

/* Fills c with the defaults; data_dir is $STATE_DIRECTORY when systemd sets it. */
void conf_defaults(conf_t *c);

/*
 * Applies argv (flags --name value / --name=value, and --insecure) over a config file
 * given with --config, over the defaults. Sets *print when --print-config was given.
 * Returns 0, or SD_EUSAGE naming the flag or file:line.
 */
SD_MUST_CHECK int conf_parse(conf_t *c, int argc, char **argv, bool *print, sd_error_t *e);

/* Re-reads c->config for the settings marked reloadable (SIGHUP); on any error c is left
 * exactly as it was. */
SD_MUST_CHECK int conf_reload(conf_t *c, sd_error_t *e);

/* Writes the effective settings as a config file, each with its help (--print-config),
 * or, with flags, as the command-line options they are (--help). */
void conf_print(const conf_t *c, bool flags);

/* Splits "host:port" / "[v6]:port". Returns 0 or SD_EUSAGE. */
SD_MUST_CHECK int conf_listen_split(const char *listen, char *host, size_t cap, int *port,
				    sd_error_t *e);

#endif
