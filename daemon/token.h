/*
 * token: `sparsityd token create | list | revoke`, the operator's side of API tokens
 * (the store keeps them, store/store_token.c; the API checks them, api/api_auth.c).
 * Runs beside a running daemon: the store is opened shared, and what it changes
 * applies to the daemon's next request.
 */
#ifndef TOKEN_H
#define TOKEN_H

/* argv[0] is "token". Returns the process exit status (the error table's). */
int token_main(int argc, char **argv);

#endif
