/*
 * floor_uring: the floor relay (floor.c) on io_uring instead of epoll, to
 * see how far fewer kernel crossings take a proxy's CPU (issue 26, items
 * 1 and 8). One thread, one ring, and one io_uring_enter per loop turn
 * (io_uring_submit_and_wait) carrying every request the turn prepared.
 *
 * Per connection: a multishot accept on each listener delivers the client
 * sockets (no accept call, no poll); socket(2) makes the backend socket and
 * the ring connects it; each direction relays with a recv into a 16 KiB
 * buffer, then a send (MSG_WAITALL: all of it, or fail) linked to the next
 * recv, so that one completion drives one round; a recv of 0 passes the
 * half-close on with shutdown(2); close goes through the ring. Requests
 * whose success needs no action post no completion (IOSQE_CQE_SKIP_SUCCESS).
 *
 * shutdown(2) and socket(2) stay system calls: the ring's IORING_OP_SHUTDOWN
 * always runs on an io-wq worker thread (a thread wake-up per connection),
 * and a ring socket would need a loop turn of its own before its connect.
 *
 *   floor_uring -t LISTEN=BACKEND ...
 *
 * TCP only (floor's -u and -1 are refused); addresses are IPv4 HOST:PORT.
 * Benchmark tooling, not product: no timeouts, no configuration, no
 * logging per connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ 16384
#define SQ_ENTRIES 4096

/* What a completion's user_data points at (0: nothing to do). */
enum kind { OP_ACCEPT, OP_CONNECT, OP_RECV };

struct op {
	enum kind kind;
	int side; /* OP_RECV: 0 client, 1 backend */
	struct conn *c;
};

struct listener {
	struct op op; /* first: its accept's user_data */
	int fd;
	struct sockaddr_in backend;
};

/* One direction: recv from fd[i], send to fd[1-i]. */
struct dir {
	int len;       /* bytes received and not yet sent (before the connect) */
	int eof, shut; /* the source said EOF; the half-close was passed on */
	char buf[BUFSZ];
};

struct conn {
	struct op recv_op[2], connect_op;
	int fd[2];    /* client, backend */
	int inflight; /* requests that will post a completion naming c */
	int connected, dead;
	struct conn *next_dead;
	struct dir d[2]; /* d[0]: client to backend, d[1]: backend to client */
};

static struct io_uring ring;
static struct conn *dead; /* ended, freed once no completion can name them */

static void die(const char *what, int err)
{
	fprintf(stderr, "floor_uring: %s: %s\n", what, strerror(err));
	exit(1);
}

static void parse_addr(const char *s, struct sockaddr_in *a)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	if (!colon || colon - s >= (int)sizeof host) {
		fprintf(stderr, "floor_uring: bad address %s\n", s);
		exit(2);
	}
	memcpy(host, s, colon - s);
	host[colon - s] = 0;
	memset(a, 0, sizeof *a);
	a->sin_family = AF_INET;
	a->sin_port = htons(atoi(colon + 1));
	if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
		fprintf(stderr, "floor_uring: bad address %s\n", s);
		exit(2);
	}
}

/* sqe returns a free submission entry, submitting the full queue first if
 * need be (the one case with a second io_uring_enter in a turn). */
static struct io_uring_sqe *sqe(void)
{
	struct io_uring_sqe *e = io_uring_get_sqe(&ring);
	while (!e) {
		int r = io_uring_submit(&ring);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			die("io_uring_submit", -r);
		e = io_uring_get_sqe(&ring);
	}
	return e;
}

static void set(struct io_uring_sqe *e, void *data, unsigned flags)
{
	io_uring_sqe_set_data(e, data);
	e->flags |= flags;
}

static void arm_accept(struct listener *l)
{
	struct io_uring_sqe *e = sqe();
	io_uring_prep_multishot_accept(e, l->fd, NULL, NULL, SOCK_CLOEXEC);
	set(e, &l->op, 0);
}

/* Blocking sockets: io_uring tries each operation without waiting and
 * arms its own poll when it would block. */
static struct listener *listen_on(const char *arg)
{
	char spec[160];
	snprintf(spec, sizeof spec, "%s", arg);
	char *eq = strchr(spec, '=');
	if (!eq) {
		fprintf(stderr, "floor_uring: want LISTEN=BACKEND, got %s\n", arg);
		exit(2);
	}
	*eq = 0;
	struct listener *l = calloc(1, sizeof *l);
	struct sockaddr_in la;
	parse_addr(spec, &la);
	parse_addr(eq + 1, &l->backend);
	l->op.kind = OP_ACCEPT;
	l->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&la, sizeof la) < 0)
		die(spec, errno);
	if (listen(l->fd, 4096) < 0)
		die("listen", errno);
	return l;
}

/* recv_on starts a recv on side i. poll_first: data is not expected yet
 * (a reply, or a new backend), so arm the poll without trying first. */
static void recv_on(struct conn *c, int i, int poll_first)
{
	struct io_uring_sqe *e = sqe();
	io_uring_prep_recv(e, c->fd[i], c->d[i].buf, BUFSZ, 0);
	if (poll_first)
		e->ioprio |= IORING_RECVSEND_POLL_FIRST;
	set(e, &c->recv_op[i], 0);
	c->inflight++;
}

/* relay sends d[i]'s bytes to the other side and, linked behind the send,
 * receives the next ones: a failed or short send cancels the recv, whose
 * completion then says so. */
static void relay(struct conn *c, int i)
{
	struct io_uring_sqe *e = sqe();
	io_uring_prep_send(e, c->fd[1 - i], c->d[i].buf, c->d[i].len, MSG_WAITALL);
	set(e, NULL, IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS);
	c->d[i].len = 0;
	recv_on(c, i, 1);
}

static void close_fd(struct conn *c, int i, int cancel)
{
	struct io_uring_sqe *e;
	if (cancel) { /* whatever still waits on the socket, so that it closes */
		e = sqe();
		io_uring_prep_cancel_fd(e, c->fd[i], IORING_ASYNC_CANCEL_ALL);
		set(e, NULL, IOSQE_IO_HARDLINK);
	}
	e = sqe();
	io_uring_prep_close(e, c->fd[i]);
	set(e, NULL, IOSQE_CQE_SKIP_SUCCESS);
}

/* conn_end closes both sockets; c is freed once no completion names it.
 * cancel: requests may still be pending (an error, not both EOFs). */
static void conn_end(struct conn *c, int cancel)
{
	if (c->dead)
		return;
	c->dead = 1;
	close_fd(c, 0, cancel);
	close_fd(c, 1, cancel);
	c->next_dead = dead;
	dead = c;
}

/* eof: d[i]'s source ended; pass the half-close on, and when the other way
 * is done too, close (which sends the last FIN). */
static void eof(struct conn *c, int i)
{
	if (!c->d[1 - i].shut)
		shutdown(c->fd[1 - i], SHUT_WR);
	c->d[i].shut = 1;
	if (c->d[1 - i].shut)
		conn_end(c, 0);
}

static void accepted(struct listener *l, int res, unsigned cflags)
{
	if (!(cflags & IORING_CQE_F_MORE)) /* the multishot accept ended */
		arm_accept(l);
	if (res < 0)
		return; /* out of descriptors, or the client left already */
	struct conn *c;
	int bfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (bfd < 0 || !(c = malloc(sizeof *c))) {
		close(res);
		if (bfd >= 0)
			close(bfd);
		return;
	}
	memset(c, 0, offsetof(struct conn, d));
	for (int i = 0; i < 2; i++) {
		c->recv_op[i] = (struct op){ .kind = OP_RECV, .side = i, .c = c };
		memset(&c->d[i], 0, offsetof(struct dir, buf));
	}
	c->connect_op = (struct op){ .kind = OP_CONNECT, .c = c };
	c->fd[0] = res;
	c->fd[1] = bfd;
	struct io_uring_sqe *e = sqe();
	io_uring_prep_connect(e, bfd, (struct sockaddr *)&l->backend, sizeof l->backend);
	set(e, &c->connect_op, 0);
	c->inflight++;
	/* The client's first bytes may be here already: try at once. */
	recv_on(c, 0, 0);
}

static void connected(struct conn *c, int res)
{
	if (res < 0) { /* refused */
		conn_end(c, 1);
		return;
	}
	c->connected = 1;
	recv_on(c, 1, 1);
	if (c->d[0].len > 0) /* the client spoke before the connect was done */
		relay(c, 0);
	else if (c->d[0].eof)
		eof(c, 0);
}

static void received(struct conn *c, int i, int res)
{
	if (res < 0) { /* a reset, or the send before it failed (-ECANCELED) */
		conn_end(c, 1);
		return;
	}
	if (res == 0)
		c->d[i].eof = 1;
	else
		c->d[i].len = res;
	if (!c->connected)
		return; /* only the client side runs before: wait for the connect */
	if (res == 0)
		eof(c, i);
	else
		relay(c, i);
}

static void complete(struct io_uring_cqe *cqe)
{
	uintptr_t data = (uintptr_t)io_uring_cqe_get_data(cqe);
	if (data == 0)
		return; /* a failed send, cancel or close: a recv or connect says what matters */
	struct op *op = (struct op *)data;
	if (op->kind == OP_ACCEPT) {
		accepted((struct listener *)op, cqe->res, cqe->flags);
		return;
	}
	struct conn *c = op->c;
	c->inflight--;
	if (c->dead)
		return;
	if (op->kind == OP_CONNECT)
		connected(c, cqe->res);
	else
		received(c, op->side, cqe->res);
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { /* two descriptors a connection */
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	/* One issuer, completions' work run only when the loop waits: no
	 * interruptions between turns. Older kernels: plain flags. */
	struct io_uring_params p = { .flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE,
				     .cq_entries = 4 * SQ_ENTRIES };
	int r = io_uring_queue_init_params(SQ_ENTRIES, &ring, &p);
	if (r == -EINVAL) {
		p = (struct io_uring_params){ .flags = IORING_SETUP_CQSIZE, .cq_entries = 4 * SQ_ENTRIES };
		r = io_uring_queue_init_params(SQ_ENTRIES, &ring, &p);
	}
	if (r < 0)
		die("io_uring_queue_init", -r);

	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && !strcmp(argv[i], "-t")) {
			arm_accept(listen_on(argv[++i]));
			continue;
		}
		if (i + 1 < argc && (!strcmp(argv[i], "-u") || !strcmp(argv[i], "-1")))
			fprintf(stderr, "floor_uring: TCP only (%s is floor's)\n", argv[i]);
		fprintf(stderr, "usage: floor_uring [-t LISTEN=BACKEND]...\n");
		return 2;
	}
	for (;;) {
		r = io_uring_submit_and_wait(&ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			die("io_uring_submit_and_wait", -r);
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&ring, head, cqe) {
			complete(cqe);
			seen++;
		}
		io_uring_cq_advance(&ring, seen);
		/* Freed only when no pending request names them any more; the
		 * others stay on the list for a later turn. */
		for (struct conn **pc = &dead; *pc;) {
			struct conn *c = *pc;
			if (c->inflight > 0) {
				pc = &c->next_dead;
				continue;
			}
			*pc = c->next_dead;
			free(c);
		}
	}
}
