/*
 * loadgen: the bench's UDP echo server, UDP/TCP load generators and TCP sink, in one small C program.
 *
 *   udp-rate / udp-flows / udp-hold / tcp-hold  →  proxy under test  →  udp-echo / tcp-sink / origin
 *
 * Why C and not Node: the generator and the backends share one core (taskset -c 1) while the proxy
 * under test has the other. A Node dgram socket costs several µs of JavaScript per datagram, so a Node
 * echo plus generator saturates below what nginx forwards; recvmmsg/sendmmsg (man 2 recvmmsg) and
 * epoll keep the load side well ahead of any proxy. Compiled by bench/run.mjs with the system gcc;
 * nothing is downloaded.
 *
 * Every mode is bounded: by a count and a duration given on the command line, or (echo, sink, the
 * hold modes) by its parent closing stdin or sending SIGTERM. Results are one JSON line on stdout.
 *
 * Usage:
 *   loadgen udp-echo  BIND_IP PORT
 *   loadgen tcp-sink  BIND_IP PORT
 *   loadgen udp-rate  IP PORT CLIENTS SIZE STEP_MS RATE[,RATE…] PIDS   (PIDS: "-" or "1,2": proxy CPU)
 *   loadgen udp-flows IP PORT CONCURRENCY DURATION_MS MAX_FLOWS TIMEOUT_MS PIDS
 *   loadgen udp-hold  IP PORT COUNT TIMEOUT_MS
 *   loadgen tcp-hold  IP PORT COUNT TIMEOUT_MS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Clients come from 127.0.0.2 … 127.0.0.20 (all of 127/8 is local on Linux `lo`) so that 10,000+
 * sockets to one proxy port never exhaust one source address's ephemeral ports. */
#define SRC_FIRST 2
#define SRC_COUNT 19
#define BATCH 64
#define MAX_DGRAM 2048
#define HIST_BUCKETS 100000 /* 10 µs each: 0 … 1 s */

static volatile sig_atomic_t stop_flag = 0;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
  exit(2);
}

static long arg_long(const char *s, const char *name) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 0) {
    fprintf(stderr, "loadgen: %s must be a non-negative integer, got \"%s\"\n", name, s);
    exit(2);
  }
  return v;
}

static struct sockaddr_in make_addr(const char *ip, int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
    fprintf(stderr, "loadgen: \"%s\" is not an IPv4 address\n", ip);
    exit(2);
  }
  return a;
}

static struct sockaddr_in source_addr(long index, int port) {
  char ip[32];
  snprintf(ip, sizeof ip, "127.0.0.%ld", SRC_FIRST + index % SRC_COUNT);
  return make_addr(ip, port);
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void set_buffers(int fd, int bytes) {
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

/* A UDP client socket bound to a 127.0.0.x source (port 0 = ephemeral) and connected to the target,
 * so the kernel only delivers datagrams from the target to it (man 7 udp, "connect"). Returns -1 when
 * an explicit port is taken. */
static int udp_client(const struct sockaddr_in *target, long index, int port) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket(udp)");
  struct sockaddr_in src = source_addr(index, port);
  if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
    if (port != 0 && (errno == EADDRINUSE || errno == EACCES)) { close(fd); return -1; }
    die("bind(udp client)");
  }
  if (connect(fd, (const struct sockaddr *)target, sizeof *target) < 0) die("connect(udp)");
  return fd;
}

static int bound_socket(int type, const char *ip, int port) {
  int fd = socket(AF_INET, type, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = make_addr(ip, port);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  return fd;
}

static int bound_port(int fd) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  return ntohs(a.sin_port);
}

/* ---- latency histogram (for udp-rate round trips) ---- */
static uint32_t hist[HIST_BUCKETS];
static uint64_t hist_n = 0;

static void hist_add(uint64_t ns) {
  uint64_t b = ns / 10000;
  hist[b < HIST_BUCKETS ? b : HIST_BUCKETS - 1]++;
  hist_n++;
}

static double hist_pct_us(double p) {
  if (hist_n == 0) return -1;
  uint64_t want = (uint64_t)(p / 100.0 * (double)hist_n + 0.5), seen = 0;
  if (want == 0) want = 1;
  for (int i = 0; i < HIST_BUCKETS; i++) {
    seen += hist[i];
    if (seen >= want) return (i + 0.5) * 10.0;
  }
  return HIST_BUCKETS * 10.0;
}

/* ---- udp-echo: batch echo with recvmmsg/sendmmsg back to each datagram's sender ---- */
static int mode_udp_echo(const char *ip, int port) {
  int fd = bound_socket(SOCK_DGRAM, ip, port);
  set_buffers(fd, 4 << 20);
  static char bufs[BATCH][MAX_DGRAM];
  static struct sockaddr_in peers[BATCH];
  static struct iovec iov[BATCH];
  static struct mmsghdr msgs[BATCH];
  printf("{\"ready\":true,\"port\":%d}\n", bound_port(fd));
  fflush(stdout);
  uint64_t echoed = 0;
  while (!stop_flag) {
    for (int i = 0; i < BATCH; i++) {
      iov[i].iov_base = bufs[i];
      iov[i].iov_len = MAX_DGRAM;
      memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &peers[i];
      msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
    }
    int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("recvmmsg");
    }
    for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
    int sent = 0;
    while (sent < n) {
      int m = sendmmsg(fd, msgs + sent, (unsigned)(n - sent), 0);
      if (m < 0) { if (errno == EINTR) continue; break; }
      sent += m;
    }
    echoed += (uint64_t)n;
  }
  printf("{\"echoed\":%llu}\n", (unsigned long long)echoed);
  return 0;
}

/* ---- tcp-sink: accept and discard (the mirror backend) ---- */
static int mode_tcp_sink(const char *ip, int port) {
  int lfd = bound_socket(SOCK_STREAM, ip, port);
  if (listen(lfd, 4096) < 0) die("listen");
  set_nonblock(lfd);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  printf("{\"ready\":true,\"port\":%d}\n", bound_port(lfd));
  fflush(stdout);
  static char buf[65536];
  struct epoll_event evs[256];
  while (!stop_flag) {
    int n = epoll_wait(ep, evs, 256, 500);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        int c;
        while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      ssize_t r;
      while ((r = read(fd, buf, sizeof buf)) > 0) {}
      if (r == 0 || (r < 0 && errno != EAGAIN)) close(fd);
    }
  }
  return 0;
}

/* Payload layout: u32 client id, u32 sequence, u64 send time (ns); the rest zero. The id lets every
 * client check that each reply it receives is its own. */
struct payload { uint32_t id; uint32_t seq; uint64_t sent_ns; };

/* Proxy CPU seconds (utime + stime of each pid, proc(5) /proc/PID/stat fields 14 and 15), read here
 * so that each step's CPU window matches its datagrams exactly. PIDS is "-" or "1,2,3". */
static double proxy_cpu_sec(const char *pids) {
  if (pids == NULL || strcmp(pids, "-") == 0) return -1;
  double ticks = 0;
  char list[512], path[64], buf[1024];
  snprintf(list, sizeof list, "%s", pids);
  for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
    snprintf(path, sizeof path, "/proc/%s/stat", tok);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may hold spaces: fields restart after the last ')' */
    unsigned long long ut = 0, st = 0;
    if (p && sscanf(p + 2, "%*c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %llu %llu", &ut, &st) == 2) ticks += (double)(ut + st);
  }
  return ticks / (double)sysconf(_SC_CLK_TCK);
}

/* Receives every queued reply; returns how many arrived. A reply is counted only on the socket of the
 * client whose id it carries: anything else went to the wrong client. */
static uint64_t drain_replies(int ep, const int *fds, uint64_t *wrong, int timeout_ms, int record) {
  struct epoll_event evs[512];
  char in[MAX_DGRAM];
  uint64_t got = 0;
  int n = epoll_wait(ep, evs, 512, timeout_ms);
  for (int i = 0; i < n; i++) {
    uint32_t c = evs[i].data.u32;
    ssize_t r;
    while ((r = recv(fds[c], in, sizeof in, 0)) > 0) {
      const struct payload *q = (const struct payload *)in;
      if (r < (ssize_t)sizeof *q || q->id != c) { (*wrong)++; continue; }
      got++;
      if (record) hist_add(now_ns() - q->sent_ns);
    }
  }
  return got;
}

/* Warm-up: every client sends until it is answered once, so each step measures forwarding on
 * established flows, not flow creation (udp-flows measures that). */
static uint64_t warm_flows(int ep, const int *fds, long clients, uint64_t *wrong) {
  struct payload p = {0};
  uint64_t got = 0;
  for (int attempt = 0; attempt < 10 && got < (uint64_t)clients; attempt++) {
    for (long c = 0; c < clients; c++) { p.id = (uint32_t)c; send(fds[c], &p, sizeof p, 0); }
    uint64_t until = now_ns() + 200000000ull;
    while (now_ns() < until) got += drain_replies(ep, fds, wrong, 10, 0);
  }
  return got;
}

/* Waits until no reply has arrived for 100 ms (at most 1 s): a saturated proxy still holds queued
 * datagrams, which must not count in the next step. */
static void settle(int ep, const int *fds, uint64_t *late, uint64_t *wrong) {
  uint64_t hard_end = now_ns() + 1000000000ull, quiet_end = now_ns() + 100000000ull;
  while (now_ns() < hard_end && now_ns() < quiet_end) {
    uint64_t got = drain_replies(ep, fds, wrong, 10, 0);
    if (got > 0) { *late += got; quiet_end = now_ns() + 100000000ull; }
  }
}

/* One step: offer `rate` datagrams/s in total, round robin over the clients, for step_ms; then drain
 * replies for up to 500 ms. Prints one JSON line. */
static void rate_step(int ep, const int *fds, long clients, long rate, long step_ms, long size, const char *pids) {
  char out[MAX_DGRAM] = {0};
  struct payload *p = (struct payload *)out;
  uint64_t sent = 0, send_err = 0, received = 0, wrong = 0, offered = 0, late = 0;
  memset(hist, 0, sizeof hist);
  hist_n = 0;
  double cpu0 = proxy_cpu_sec(pids);
  uint64_t start = now_ns(), end = start + (uint64_t)step_ms * 1000000ull, drain_end = end + 500000000ull;
  long rr = 0;
  for (;;) {
    uint64_t t = now_ns();
    if (t >= drain_end || (t >= end && received + wrong >= sent)) break;
    if (t < end) {
      uint64_t due = (uint64_t)((double)rate * (double)(t - start) / 1e9);
      for (int burst = 0; offered < due && burst < 4096; burst++, offered++) {
        long c = rr++ % clients;
        p->id = (uint32_t)c;
        p->seq = (uint32_t)offered;
        p->sent_ns = now_ns();
        if (send(fds[c], out, (size_t)size, 0) == (ssize_t)size) sent++;
        else send_err++;
      }
    }
    /* Waits at most 1 ms when caught up: spinning would steal the core from the echo server. */
    received += drain_replies(ep, fds, &wrong, 1, 1);
  }
  double cpu1 = proxy_cpu_sec(pids);
  settle(ep, fds, &late, &wrong);
  double secs = (double)step_ms / 1000.0;
  printf("{\"mode\":\"udp-rate\",\"clients\":%ld,\"rate\":%ld,\"durationMs\":%ld,\"size\":%ld,"
         "\"offered\":%llu,\"sent\":%llu,\"sendErrors\":%llu,\"received\":%llu,\"late\":%llu,\"wrong\":%llu,"
         "\"sentPerSec\":%.1f,\"receivedPerSec\":%.1f,\"rttP50Us\":%.1f,\"rttP99Us\":%.1f,\"proxyCpuSec\":%.3f}\n",
         clients, rate, step_ms, size, (unsigned long long)offered, (unsigned long long)sent,
         (unsigned long long)send_err, (unsigned long long)received, (unsigned long long)late,
         (unsigned long long)wrong, (double)sent / secs, (double)received / secs, hist_pct_us(50),
         hist_pct_us(99), cpu0 < 0 ? -1.0 : cpu1 - cpu0);
  fflush(stdout);
}

/* ---- udp-rate: CLIENTS established flows, then one step per offered rate in RATES ---- */
static int mode_udp_rate(const struct sockaddr_in *target, long clients, long size, long step_ms, const char *rates, const char *pids) {
  if (clients < 1 || size < (long)sizeof(struct payload) || size > MAX_DGRAM) {
    fprintf(stderr, "loadgen: udp-rate needs CLIENTS >= 1 and %zu <= SIZE <= %d\n", sizeof(struct payload), MAX_DGRAM);
    return 2;
  }
  int *fds = calloc((size_t)clients, sizeof(int));
  int ep = epoll_create1(0);
  for (long i = 0; i < clients; i++) {
    fds[i] = udp_client(target, i, 0);
    set_buffers(fds[i], 1 << 20);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
  }
  uint64_t wrong = 0, warm = warm_flows(ep, fds, clients, &wrong);
  printf("{\"mode\":\"udp-warm\",\"clients\":%ld,\"answered\":%llu,\"wrong\":%llu}\n", clients,
         (unsigned long long)warm, (unsigned long long)wrong);
  char list[512];
  snprintf(list, sizeof list, "%s", rates);
  char *save = NULL;
  for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
    rate_step(ep, fds, clients, arg_long(tok, "RATE"), step_ms, size, pids);
  return 0;
}

/* ---- udp-flows: each flow is a fresh client socket (new source port) sending one datagram ---- */
struct flow_slot { int fd; uint32_t id; uint64_t sent_ns; };
static long next_flow_port = 0; /* walks 127.0.0.x:10000-64999, so no source address:port repeats */

static int open_flow(const struct sockaddr_in *target, int ep, struct flow_slot *s, uint32_t slot, uint32_t id) {
  for (int tries = 0; tries < 1000; tries++) {
    long k = next_flow_port++;
    long addr = k % SRC_COUNT, port = 10000 + (k / SRC_COUNT) % 55000;
    int fd = udp_client(target, addr, (int)port);
    if (fd < 0) continue;
    struct payload p = {.id = id, .seq = 0, .sent_ns = now_ns()};
    s->fd = fd; s->id = id; s->sent_ns = p.sent_ns;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = slot};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return send(fd, &p, sizeof p, 0) == (ssize_t)sizeof p ? 0 : 1;
  }
  errno = EADDRINUSE;
  die("no free source port for a new flow");
  return 2;
}

static int mode_udp_flows(const struct sockaddr_in *target, long conc, long duration_ms, long max_flows, long timeout_ms, const char *pids) {
  if (conc < 1) { fprintf(stderr, "loadgen: udp-flows needs CONCURRENCY >= 1\n"); return 2; }
  struct flow_slot *slots = calloc((size_t)conc, sizeof *slots);
  int ep = epoll_create1(0);
  uint64_t opened = 0, done = 0, lost = 0, wrong = 0, send_err = 0;
  double cpu0 = proxy_cpu_sec(pids);
  uint64_t start = now_ns(), end = start + (uint64_t)duration_ms * 1000000ull, timeout = (uint64_t)timeout_ms * 1000000ull;
  uint64_t last_scan = start;
  for (long i = 0; i < conc && (long)opened < max_flows; i++, opened++)
    send_err += (uint64_t)open_flow(target, ep, &slots[i], (uint32_t)i, (uint32_t)opened);
  struct epoll_event evs[512];
  char in[MAX_DGRAM];
  while (now_ns() < end) {
    int n = epoll_wait(ep, evs, 512, 5);
    uint64_t t = now_ns();
    for (int i = 0; i < n; i++) {
      struct flow_slot *s = &slots[evs[i].data.u32];
      ssize_t r = recv(s->fd, in, sizeof in, 0);
      if (r < 0) continue;
      const struct payload *q = (const struct payload *)in;
      if (r < (ssize_t)sizeof *q || q->id != s->id) { wrong++; continue; }
      done++;
      close(s->fd);
      s->fd = -1;
      if (t < end && (long)opened < max_flows) { send_err += (uint64_t)open_flow(target, ep, s, evs[i].data.u32, (uint32_t)opened); opened++; }
    }
    t = now_ns(); /* flows opened above were stamped after the t read before them */
    if (t - last_scan > 10000000ull) {
      last_scan = t;
      for (long i = 0; i < conc; i++) {
        struct flow_slot *s = &slots[i];
        if (s->fd < 0 || t - s->sent_ns < timeout) continue;
        lost++;
        close(s->fd);
        s->fd = -1;
        if ((long)opened < max_flows) { send_err += (uint64_t)open_flow(target, ep, s, (uint32_t)i, (uint32_t)opened); opened++; }
      }
    }
    if ((long)opened >= max_flows && done + lost >= opened) break;
  }
  double secs = (double)(now_ns() - start) / 1e9, cpu1 = proxy_cpu_sec(pids);
  long inflight = 0;
  for (long i = 0; i < conc; i++) if (slots[i].fd >= 0) { inflight++; close(slots[i].fd); }
  printf("{\"mode\":\"udp-flows\",\"concurrency\":%ld,\"opened\":%llu,\"completed\":%llu,\"lost\":%llu,"
         "\"wrong\":%llu,\"sendErrors\":%llu,\"inflight\":%ld,\"elapsedSec\":%.3f,\"flowsPerSec\":%.1f,"
         "\"proxyCpuSec\":%.3f}\n",
         conc, (unsigned long long)opened, (unsigned long long)done, (unsigned long long)lost,
         (unsigned long long)wrong, (unsigned long long)send_err, inflight, secs, (double)done / secs,
         cpu0 < 0 ? -1.0 : cpu1 - cpu0);
  return 0;
}

/* Blocks until the parent closes stdin (or signals): the hold modes keep their sockets until then. */
static void wait_for_stdin_eof(void) {
  char buf[256];
  while (!stop_flag) {
    ssize_t r = read(0, buf, sizeof buf);
    if (r == 0 || (r < 0 && errno != EINTR)) return;
  }
}

/* ---- udp-hold: COUNT flows, each answered once, then held open ---- */
static int mode_udp_hold(const struct sockaddr_in *target, long count, long timeout_ms) {
  int *fds = calloc((size_t)count, sizeof(int));
  char *answered = calloc((size_t)count, 1);
  int ep = epoll_create1(0);
  uint64_t got = 0, wrong = 0;
  struct epoll_event evs[512];
  char in[MAX_DGRAM];
  uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
  /* Open in waves of 500 and wait for each wave: a burst of thousands of new clients overflows the
   * proxy's receive buffer (docs/FIELD-NOTES.md, UDP), and this test measures memory, not burst loss. */
  for (long base = 0; base < count && now_ns() < deadline; base += 500) {
    long top = base + 500 < count ? base + 500 : count;
    for (long i = base; i < top; i++) {
      fds[i] = udp_client(target, i, 0);
      struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
      epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    for (int attempt = 0; attempt < 5; attempt++) {
      for (long i = base; i < top; i++) {
        if (answered[i]) continue;
        struct payload p = {.id = (uint32_t)i, .seq = (uint32_t)attempt, .sent_ns = now_ns()};
        send(fds[i], &p, sizeof p, 0);
      }
      uint64_t wave_end = now_ns() + 200000000ull;
      long pending = 0;
      for (long i = base; i < top; i++) pending += !answered[i];
      while (pending > 0 && now_ns() < wave_end) {
        int n = epoll_wait(ep, evs, 512, 20);
        for (int k = 0; k < n; k++) {
          uint32_t i = evs[k].data.u32;
          ssize_t r;
          while ((r = recv(fds[i], in, sizeof in, 0)) > 0) {
            const struct payload *q = (const struct payload *)in;
            if (r < (ssize_t)sizeof *q || q->id != i) { wrong++; continue; }
            if (!answered[i]) { answered[i] = 1; got++; pending--; }
          }
        }
      }
      if (pending == 0) break;
    }
  }
  printf("{\"mode\":\"udp-hold\",\"count\":%ld,\"answered\":%llu,\"wrong\":%llu}\n", count,
         (unsigned long long)got, (unsigned long long)wrong);
  fflush(stdout);
  wait_for_stdin_eof();
  return 0;
}

/* ---- tcp-hold: COUNT idle TCP connections, held until stdin closes ---- */
static int mode_tcp_hold(const struct sockaddr_in *target, long count, long timeout_ms) {
  int *fds = calloc((size_t)count, sizeof(int));
  char *state = calloc((size_t)count, 1); /* 0 pending, 1 connected, 2 failed */
  int ep = epoll_create1(0);
  uint64_t ok = 0, failed = 0;
  uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
  struct epoll_event evs[512];
  long next = 0, pending = 0;
  while ((ok + failed < (uint64_t)count) && now_ns() < deadline) {
    /* At most 256 handshakes in flight: stays under every listener's accept backlog. */
    while (next < count && pending < 256) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      if (fd < 0) die("socket(tcp)");
      int one = 1;
      /* Defer the port choice to connect() so ports are shared across destinations (man 7 ip). */
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      struct sockaddr_in src = source_addr(next, 0);
      if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) die("bind(tcp client)");
      fds[next] = fd;
      if (connect(fd, (const struct sockaddr *)target, sizeof *target) < 0 && errno != EINPROGRESS) {
        state[next] = 2; failed++; close(fd); fds[next] = -1; next++;
        continue;
      }
      struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)next};
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      next++;
      pending++;
    }
    int n = epoll_wait(ep, evs, 512, 50);
    for (int k = 0; k < n; k++) {
      uint32_t i = evs[k].data.u32;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &len);
      pending--;
      if (err == 0) {
        state[i] = 1; ok++;
        struct epoll_event ev = {.events = EPOLLRDHUP, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
      } else {
        state[i] = 2; failed++; epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL); close(fds[i]); fds[i] = -1;
      }
    }
  }
  printf("{\"mode\":\"tcp-hold\",\"count\":%ld,\"connected\":%llu,\"failed\":%llu}\n", count,
         (unsigned long long)ok, (unsigned long long)failed);
  fflush(stdout);
  wait_for_stdin_eof();
  /* A connection the proxy closed while idle shows EPOLLRDHUP: report how many were still open. */
  long closed_by_peer = 0;
  int n;
  while ((n = epoll_wait(ep, evs, 512, 0)) > 0) {
    for (int k = 0; k < n; k++) {
      uint32_t i = evs[k].data.u32;
      if (state[i] == 1) { closed_by_peer++; state[i] = 3; }
      epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
    }
  }
  printf("{\"mode\":\"tcp-hold-end\",\"closedByPeer\":%ld}\n", closed_by_peer);
  return 0;
}

int main(int argc, char **argv) {
  /* No SA_RESTART: a blocking recvmmsg/read must return EINTR so SIGTERM ends the loop (man 7 signal,
   * "Interruption of system calls"); glibc's signal() would restart them. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 4) {
    fprintf(stderr, "usage: loadgen udp-echo|tcp-sink|udp-rate|udp-flows|udp-hold|tcp-hold IP PORT ...\n");
    return 2;
  }
  const char *mode = argv[1], *ip = argv[2];
  int port = (int)arg_long(argv[3], "PORT");
  if (strcmp(mode, "udp-echo") == 0) return mode_udp_echo(ip, port);
  if (strcmp(mode, "tcp-sink") == 0) return mode_tcp_sink(ip, port);
  struct sockaddr_in target = make_addr(ip, port);
  if (strcmp(mode, "udp-rate") == 0 && argc == 9)
    return mode_udp_rate(&target, arg_long(argv[4], "CLIENTS"), arg_long(argv[5], "SIZE"),
                         arg_long(argv[6], "STEP_MS"), argv[7], argv[8]);
  if (strcmp(mode, "udp-flows") == 0 && argc == 9)
    return mode_udp_flows(&target, arg_long(argv[4], "CONCURRENCY"), arg_long(argv[5], "DURATION_MS"),
                          arg_long(argv[6], "MAX_FLOWS"), arg_long(argv[7], "TIMEOUT_MS"), argv[8]);
  if (strcmp(mode, "udp-hold") == 0 && argc == 6)
    return mode_udp_hold(&target, arg_long(argv[4], "COUNT"), arg_long(argv[5], "TIMEOUT_MS"));
  if (strcmp(mode, "tcp-hold") == 0 && argc == 6)
    return mode_tcp_hold(&target, arg_long(argv[4], "COUNT"), arg_long(argv[5], "TIMEOUT_MS"));
  fprintf(stderr, "loadgen: unknown mode or wrong argument count for \"%s\" (see the usage in bench/loadgen.c)\n", mode);
  return 2;
}
