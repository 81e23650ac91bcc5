/*
 * sparsityd-server: the daemon's half of sparsityd. `sparsityd serve` and `sparsityd
 * token` exec it (daemon/main.c), so argv is theirs from "serve" or "token" on. It is
 * a binary of its own because the libraries only the daemon needs (libmicrohttpd and
 * GnuTLS, SQLite, libcrypto, libuv) cost every process that loads them about 5 ms at
 * start, a tenth of a `sparsityd prune` of ResNet50; the stages link none of them.
 */
#include <stdio.h>
#include <string.h>

#include "daemon/serve.h"
#include "daemon/token.h"

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "serve") == 0)
		return serve_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "token") == 0)
		return token_main(argc - 1, argv + 1);
	fprintf(stderr, "sparsityd-server: run it as `sparsityd serve` or `sparsityd token`\n");
	return 2;
}
