/*
 * floor: the smallest relay that does a proxy's job, as a yardstick for the
 * benchmark (issue 26, item 7). One thread, one epoll set, non-blocking
 * sockets, and only the system calls a proxied connection needs: accept4,
 * socket, connect, read, write, shutdown, close (recvfrom/send/recv/sendto
 * for UDP), plus epoll_ctl once per socket and epoll_wait.
 *
 * It deliberately does not splice: it is the system-call floor of a
 * read/write relay, with a 16 KiB buffer per direction.
 *
 *   floor -t LISTEN=BACKEND ... -u LISTEN=BACKEND ... -1 LISTEN=BACKEND ...
 *
 * -t relays TCP, -u UDP, -1 UDP with a session per request (it ends with
 * its first reply); addresses are IPv4 HOST:PORT. Benchmark tooling,
 * not product: no timeouts on TCP, no configuration, no logging per
 * connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ 16384
#define UDP_IDLE 30 /* seconds a UDP session lives without traffic */
#define NBUCKETS 4096

enum kind { TCP_LISTEN, TCP_END, UDP_LISTEN, UDP_SESSION };

struct listener {
	enum kind kind; /* first member of everything epoll points at */
	int fd;
	struct sockaddr_in backend;
	int one_reply; /* UDP (-1): a session ends with its first reply */
};

/* One direction of a connection: read from fd[i], write to fd[1-i]. */
struct dir {
	int off, len;  /* pending bytes are buf[off:len] */
	int readable;  /* the source may have data (an edge not yet drained) */
	int hup;       /* the source reported RDHUP/HUP/ERR: read to EOF */
	int blocked;   /* the destination was full: wait for EPOLLOUT */
	int eof, shut; /* the source said EOF; shutdown(SHUT_WR) done */
	char buf[BUFSZ];
};

struct conn;
struct end {
	enum kind kind;
	int side; /* 0: client, 1: backend */
	struct conn *c;
};

struct conn {
	struct end e[2];
	int fd[2];
	int connected, dead;
	struct conn *next_dead;
	struct dir d[2]; /* d[0]: client to backend, d[1]: backend to client */
};

struct session {
	enum kind kind;
	int fd; /* connected to the backend */
	struct listener *l;
	struct sockaddr_in client;
	time_t last;
	struct session *next; /* hash chain */
};

static int ep;
static time_t now;
static struct conn *dead; /* closed during this batch of events, freed after it */
static struct session *buckets[NBUCKETS];
static char dgram[65536];

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void parse_addr(const char *s, struct sockaddr_in *a)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	if (!colon || colon - s >= (int)sizeof host) {
		fprintf(stderr, "floor: bad address %s\n", s);
		exit(2);
	}
	memcpy(host, s, colon - s);
	host[colon - s] = 0;
	memset(a, 0, sizeof *a);
	a->sin_family = AF_INET;
	a->sin_port = htons(atoi(colon + 1));
	if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
		fprintf(stderr, "floor: bad address %s\n", s);
		exit(2);
	}
}

static void watch(int fd, uint32_t events, void *ptr)
{
	struct epoll_event ev = { .events = events, .data.ptr = ptr };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
}

/* listen_on parses "LISTEN=BACKEND" and binds a listener of the given type. */
static struct listener *listen_on(const char *arg, int type)
{
	char spec[160];
	snprintf(spec, sizeof spec, "%s", arg);
	char *eq = strchr(spec, '=');
	if (!eq) {
		fprintf(stderr, "floor: want LISTEN=BACKEND, got %s\n", arg);
		exit(2);
	}
	*eq = 0;
	struct listener *l = calloc(1, sizeof *l);
	struct sockaddr_in la;
	parse_addr(spec, &la);
	parse_addr(eq + 1, &l->backend);
	l->kind = type == SOCK_STREAM ? TCP_LISTEN : UDP_LISTEN;
	l->fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&la, sizeof la) < 0)
		die(spec);
	if (type == SOCK_STREAM && listen(l->fd, 4096) < 0)
		die("listen");
	/* Level-triggered, one accept or datagram per event: no call ends in
	 * EAGAIN, and epoll_wait batches whatever else is ready. */
	watch(l->fd, EPOLLIN, l);
	return l;
}

/* conn_close closes both sockets (which leaves the epoll set) and queues c
 * to be freed once the current batch of events, which may name it, is done. */
static void conn_close(struct conn *c)
{
	if (c->dead)
		return;
	c->dead = 1;
	close(c->fd[0]);
	close(c->fd[1]);
	c->next_dead = dead;
	dead = c;
}

/* pump moves what it can in direction i; -1 on a socket error. It makes a
 * system call only when one can make progress. */
static int pump(struct conn *c, int i)
{
	struct dir *d = &c->d[i];
	int src = c->fd[i], dst = c->fd[1 - i];
	if (!c->connected)
		return 0;
	for (;;) {
		if (d->off < d->len) {
			if (d->blocked)
				return 0;
			ssize_t n = write(dst, d->buf + d->off, d->len - d->off);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR) {
					d->blocked = 1;
					return 0;
				}
				return -1;
			}
			d->off += n;
			if (d->off < d->len) { /* short write: the socket is full (epoll(7)) */
				d->blocked = 1;
				return 0;
			}
			d->off = d->len = 0;
		}
		if (d->eof) {
			if (!d->shut) {
				/* Propagate the half-close; when the other way is done
				 * too, the close that follows sends the FIN. */
				if (!c->d[1 - i].shut)
					shutdown(dst, SHUT_WR);
				d->shut = 1;
			}
			return 0;
		}
		if (!d->readable)
			return 0;
		ssize_t n = read(src, d->buf, BUFSZ);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR) {
				d->readable = 0;
				return 0;
			}
			return -1;
		}
		if (n == 0) {
			d->eof = 1;
			continue;
		}
		d->len = n;
		/* A short read drained a stream socket (epoll(7)): new data brings a
		 * new edge. Not so for a FIN already queued: with hup, read to EOF. */
		if (n < BUFSZ && !d->hup)
			d->readable = 0;
	}
}

static void tcp_accept(struct listener *l)
{
	int cfd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (cfd < 0)
		return; /* EAGAIN (another event took it), or out of descriptors */
	int bfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (bfd < 0) {
		close(cfd);
		return;
	}
	int connected = connect(bfd, (struct sockaddr *)&l->backend, sizeof l->backend) == 0;
	if (!connected && errno != EINPROGRESS) {
		close(cfd);
		close(bfd);
		return;
	}
	struct conn *c = malloc(sizeof *c);
	if (!c) {
		close(cfd);
		close(bfd);
		return;
	}
	memset(c, 0, offsetof(struct conn, d)); /* all but the buffers */
	for (int i = 0; i < 2; i++) {
		c->e[i] = (struct end){ .kind = TCP_END, .side = i, .c = c };
		memset(&c->d[i], 0, offsetof(struct dir, buf));
	}
	c->fd[0] = cfd;
	c->fd[1] = bfd;
	c->connected = connected;
	/* Edge-triggered for reads and writes at once: no epoll_ctl after this.
	 * Adding a socket that already has data reports it at once. */
	watch(cfd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &c->e[0]);
	watch(bfd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &c->e[1]);
}

static void tcp_event(struct end *e, uint32_t ev)
{
	struct conn *c = e->c;
	int j = e->side;
	if (c->dead)
		return;
	if (j == 1 && !c->connected) {
		if (ev & (EPOLLERR | EPOLLHUP)) { /* the backend refused */
			conn_close(c);
			return;
		}
		if (ev & EPOLLOUT)
			c->connected = 1;
	}
	if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->d[j].readable = 1;
	if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->d[j].hup = 1;
	if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		c->d[1 - j].blocked = 0;
	if (pump(c, 0) < 0 || pump(c, 1) < 0 || (c->d[0].shut && c->d[1].shut))
		conn_close(c);
}

static struct session **slot(struct listener *l, struct sockaddr_in *a)
{
	unsigned h = (a->sin_addr.s_addr * 2654435761u) ^ (a->sin_port * 40503u) ^ (unsigned)(size_t)l;
	struct session **p = &buckets[h % NBUCKETS];
	while (*p && ((*p)->l != l || (*p)->client.sin_addr.s_addr != a->sin_addr.s_addr ||
		      (*p)->client.sin_port != a->sin_port))
		p = &(*p)->next;
	return p;
}

/* udp_in relays one datagram from a client, opening its session on the first. */
static void udp_in(struct listener *l)
{
	struct sockaddr_in from;
	socklen_t flen = sizeof from;
	ssize_t n = recvfrom(l->fd, dgram, sizeof dgram, 0, (struct sockaddr *)&from, &flen);
	if (n < 0 || from.sin_family != AF_INET)
		return;
	struct session **p = slot(l, &from);
	struct session *s = *p;
	if (!s) {
		int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return;
		if (connect(fd, (struct sockaddr *)&l->backend, sizeof l->backend) < 0 ||
		    !(s = calloc(1, sizeof *s))) {
			close(fd);
			return;
		}
		*s = (struct session){ .kind = UDP_SESSION, .fd = fd, .l = l, .client = from };
		*p = s;
		watch(fd, EPOLLIN, s);
	}
	s->last = now;
	send(s->fd, dgram, n, 0); /* a refused or dropped datagram is the client's to retry */
}

/* udp_out relays one datagram from the backend to the session's client. */
static void udp_out(struct session *s)
{
	ssize_t n = recv(s->fd, dgram, sizeof dgram, 0);
	if (n < 0)
		return; /* EAGAIN, or an ICMP error from the backend */
	s->last = now;
	sendto(s->l->fd, dgram, n, 0, (struct sockaddr *)&s->client, sizeof s->client);
	if (s->l->one_reply) { /* as max_responses = 1 / proxy_responses 1 */
		*slot(s->l, &s->client) = s->next;
		close(s->fd);
		free(s);
	}
}

/* expire closes the UDP sessions idle for UDP_IDLE seconds. */
static void expire(void)
{
	for (int b = 0; b < NBUCKETS; b++) {
		for (struct session **p = &buckets[b]; *p;) {
			struct session *s = *p;
			if (now - s->last < UDP_IDLE) {
				p = &s->next;
				continue;
			}
			*p = s->next;
			close(s->fd);
			free(s);
		}
	}
}

static time_t seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* vDSO: no system call */
	return ts.tv_sec;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { /* two descriptors a connection */
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		die("epoll_create1");
	/* UDP first, so that once the TCP ports accept, everything is bound. */
	int udp = 0;
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 1; i < argc; i++) {
			if (i + 1 < argc && (!strcmp(argv[i], "-t") || !strcmp(argv[i], "-u") || !strcmp(argv[i], "-1"))) {
				int isudp = argv[i][1] != 't';
				if (isudp == (pass == 0)) {
					struct listener *l = listen_on(argv[i + 1], isudp ? SOCK_DGRAM : SOCK_STREAM);
					l->one_reply = argv[i][1] == '1';
					udp |= isudp;
				}
				i++;
				continue;
			}
			fprintf(stderr, "usage: floor [-t LISTEN=BACKEND]... [-u LISTEN=BACKEND]... [-1 LISTEN=BACKEND]...\n");
			return 2;
		}
	}
	struct epoll_event evs[256];
	time_t swept = now = seconds();
	for (;;) {
		/* With UDP sessions to expire, wake at least once a second. */
		int n = epoll_wait(ep, evs, 256, udp ? 1000 : -1);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		now = seconds();
		for (int i = 0; i < n; i++) {
			switch (*(enum kind *)evs[i].data.ptr) {
			case TCP_LISTEN:
				tcp_accept(evs[i].data.ptr);
				break;
			case TCP_END:
				tcp_event(evs[i].data.ptr, evs[i].events);
				break;
			case UDP_LISTEN:
				udp_in(evs[i].data.ptr);
				break;
			case UDP_SESSION:
				udp_out(evs[i].data.ptr);
				break;
			}
		}
		while (dead) {
			struct conn *c = dead;
			dead = c->next_dead;
			free(c);
		}
		if (udp && now - swept >= 10) {
			expire();
			swept = now;
		}
	}
}
