/* The host's floor for an open-loop HTTP/1.1 sender: what a minimal C sender pays per request.
 *
 * tools/bench_floor.py builds and runs this beside `cpbench replay` (same nginx, same request
 * bytes, same arrivals) so the dispatcher's CPU per request and dispatch lag have a reference
 * that has no Python and no event-loop library in it: one epoll, one timerfd armed at the next
 * send's absolute time (how cpbench's dispatcher waits), keep-alive connections opened before
 * the start, the requests due at a wake-up written whole, and the answer read until its
 * Content-Length or chunked terminator, an idle connection reused most recent first. What
 * this program pays is what the kernel and the host charge for the sleep, the wake-up and the
 * two syscalls a request needs.
 *
 *   floor HOST PORT SCHEDULE_FILE REQUEST_FILE CONNECTIONS OUT_FILE [START_NS [THREADS]]
 *
 * SCHEDULE_FILE holds the send offsets (int64 ns from the start, ascending: a trace's
 * arrival_ns); REQUEST_FILE the bytes of one request, sent every time. The offsets count
 * from START_NS (CLOCK_MONOTONIC), which lets several processes share one schedule; without
 * it (or 0), from 20 ms after the pool is open. THREADS 2 splits the work the way a
 * dispatcher with a sending thread would: one thread only waits on the timerfd and writes,
 * the other only reads, and finished connections go back to the sender through a
 * single-producer single-consumer ring. THREADS 3 is one thread with no timerfd: each wait is
 * an epoll_pwait2 whose nanosecond timeout ends at the next send's instant (a timer armed only
 * when the wait sleeps, cancelled when a socket wakes it first). Writes to OUT_FILE the
 * intended and sent times (int64 ns, CLOCK_MONOTONIC), request by request, and prints one
 * JSON line: requests, answers, errors, cpu_s (user + system of all threads, from before the
 * pool opens to the last answer), connections.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 16384
#define READ_BUF 262144
#define HEAD_MAX 2048

typedef struct {
    int fd;
    int busy;
    char head[HEAD_MAX + 1]; /* the answer's head, gathered until its blank line */
    long head_n;            /* bytes of it so far; -1 once the head is parsed */
    long body_left;         /* Content-Length bytes still to come */
    int chunked;
    char tail[5];           /* the last body bytes, to find the chunked terminator across reads */
} conn_t;

static conn_t conns[MAX_CONNS];
static int nconns;                    /* connections opened (conns[0:nconns]) */
static struct sockaddr_in addr;
static int ep, tfd;                   /* the sockets' epoll; the timerfd */
/* Idle connections: a ring the reader fills and the sender takes from (with one thread both
 * are the same thread). Single producer, single consumer. */
static int ring[MAX_CONNS];
static _Atomic long ring_head, ring_tail;
static int one_thread = 1;            /* THREADS 1 or 3: the ring is used as a stack */
static int wait_timed = 0;            /* THREADS 3: no timerfd; epoll_pwait2's timeout */
static _Atomic long answered, errors;
static int64_t *intended, *sent;
static long total, next_row;
static char req[1 << 20];
static long req_n;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec
           + u.ru_stime.tv_usec / 1e6;
}

/* What cpbench's worker asks of the kernel before it starts (cpbench/replaying/timer.py):
 * 1 ns timer slack, so the timerfd fires when armed rather than up to 50 µs later, and a
 * 0.1 ms scheduler slice (sched_setattr's sched_runtime under EEVDF; ignored before 6.6). */
struct sched_attr_v0 {
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
};

static void as_cpbench_worker(void) {
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    struct sched_attr_v0 a = {0};
    if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0) == 0 && a.sched_policy == 0) {
        a.size = sizeof a;
        a.sched_runtime = 100000;
        syscall(SYS_sched_setattr, 0, &a, 0);
    }
}

static int open_conn(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr*)&addr, sizeof addr) != 0 || nconns >= MAX_CONNS)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* non-blocking after the connect: reads stop at EAGAIN */
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) return -1;
    int i = nconns++;
    conns[i].fd = fd;
    conns[i].busy = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i + 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return i;
}

static void give_back(int i) {                 /* the reader: connection i is idle again */
    long t = atomic_load_explicit(&ring_tail, memory_order_relaxed);
    ring[t % MAX_CONNS] = i;
    atomic_store_explicit(&ring_tail, t + 1, memory_order_release);
}

static int take_idle(void) {                   /* the sender: an idle connection, or a new one */
    long h = atomic_load_explicit(&ring_head, memory_order_relaxed);
    if (one_thread && h < ring_tail) {
        /* One thread: the most recently freed first, as cpbench's idle pool (a stack) */
        ring_tail--;
        return ring[ring_tail % MAX_CONNS];
    }
    if (h < atomic_load_explicit(&ring_tail, memory_order_acquire)) {
        int i = ring[h % MAX_CONNS];
        atomic_store_explicit(&ring_head, h + 1, memory_order_release);
        return i;
    }
    return open_conn();
}

static void arm(int64_t at) {                  /* 0 disarms */
    if (wait_timed) return;                    /* the wait's own timeout times the send */
    struct itimerspec spec = {0};
    spec.it_value.tv_sec = at / 1000000000LL;
    spec.it_value.tv_nsec = at % 1000000000LL;
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &spec, NULL);
}

/* The timer fired: send the rows due now, arm for the next. `now` is read once: like
 * cpbench's Sender.send_due, a row that falls due during these writes waits for the next
 * wake-up (sending it at once would shorten its gap by the wake-up latency). */
static void send_due(void) {
    int64_t now = now_ns();
    while (next_row < total && intended[next_row] <= now) {
        int i = take_idle();
        if (i < 0) {
            errors++;
            sent[next_row++] = now;
            continue;
        }
        conn_t* c = &conns[i];
        c->busy = 1;
        c->head_n = 0;
        memset(c->tail, 0, sizeof c->tail);
        sent[next_row] = now_ns();
        if (write(c->fd, req, req_n) != req_n) errors++;
        next_row++;
    }
    arm(next_row < total ? intended[next_row] : 0);
}

/* Feed one read of an answer to its connection; 1 when the answer is complete. The head is
 * gathered until its blank line, then the body is counted against Content-Length, or
 * scanned for the chunked terminator "0\r\n\r\n" (the only two framings a server uses for
 * these answers; a body that ends with the close is not used by nginx or cpbench's sim). */
static int feed(conn_t* c, const char* data, long n) {
    if (c->head_n >= 0) {
        long take = n < HEAD_MAX - c->head_n ? n : HEAD_MAX - c->head_n;
        memcpy(c->head + c->head_n, data, take);
        long had = c->head_n;
        c->head_n += take;
        c->head[c->head_n] = 0;
        const char* end = memmem(c->head, c->head_n, "\r\n\r\n", 4);
        if (end == NULL) return 0;           /* (a head over HEAD_MAX never completes) */
        long head_len = end + 4 - c->head;
        const char* cl = strcasestr(c->head, "\r\ncontent-length:");
        c->chunked = cl == NULL || cl > end;
        c->body_left = c->chunked ? 0 : strtol(cl + 17, NULL, 10);
        c->head_n = -1;
        data += head_len - had;              /* the body bytes of this read */
        n -= head_len - had;
    }
    if (!c->chunked) {
        c->body_left -= n;
        return c->body_left <= 0;
    }
    if (n <= 0) return 0;
    long keep = n < 5 ? n : 5;
    memmove(c->tail, c->tail + keep, 5 - keep);
    memcpy(c->tail + 5 - keep, data + n - keep, keep);
    return memcmp(c->tail, "0\r\n\r\n", 5) == 0;
}

/* Connection i is readable: read once; a finished answer frees the connection. */
static void on_readable(int i, char* buf, long size) {
    conn_t* c = &conns[i];
    long r = read(c->fd, buf, size);
    if (r < 0 && errno == EAGAIN) return;
    if (r <= 0) {                                /* closed: its request, if any, failed */
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        if (c->busy) errors++;
        c->busy = 0;
        return;
    }
    if (c->busy && feed(c, buf, r)) {
        c->busy = 0;
        answered++;
        give_back(i);
    }
}

static void* sending_thread(void* arg) {      /* THREADS 2: wait on the timer, write */
    (void)arg;
    as_cpbench_worker();
    while (next_row < total) {
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EINTR) break;
        send_due();
    }
    return NULL;
}

int main(int argc, char** argv) {
    if (argc < 7 || argc > 9) {
        fprintf(stderr, "usage: floor HOST PORT SCHEDULE_FILE REQUEST_FILE CONNECTIONS OUT "
                "[START_NS [THREADS]]\n");
        return 2;
    }
    FILE* f = fopen(argv[4], "rb");
    if (f != NULL) {
        req_n = fread(req, 1, sizeof req, f);
        fclose(f);
    }
    if ((f = fopen(argv[3], "rb")) != NULL) {
        fseek(f, 0, SEEK_END);
        total = ftell(f) / (long)sizeof(int64_t);
        fseek(f, 0, SEEK_SET);
        intended = malloc((total + 1) * sizeof(int64_t));
        total = (long)fread(intended, sizeof(int64_t), total, f);
        fclose(f);
    }
    int threads = argc == 9 ? atoi(argv[8]) : 1;
    one_thread = threads != 2;
    wait_timed = threads == 3;
    if (req_n <= 0 || total <= 0 || threads < 1 || threads > 3) {
        fprintf(stderr, "floor: cannot read %s or %s (or one is empty), or THREADS is not 1, "
                "2 or 3\n", argv[3], argv[4]);
        return 2;
    }
    int want_conns = atoi(argv[5]);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    sent = malloc(total * sizeof(int64_t));

    as_cpbench_worker();
    ep = epoll_create1(0);
    /* One thread: the timerfd is in the sockets' epoll. Two: the sender blocks in read() on
     * it, the reader never sees it. Three: there is none (arm() does nothing). */
    if (!wait_timed) tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    if (threads == 1) {
        struct epoll_event tev = {.events = EPOLLIN, .data.u64 = 0};
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
    }
    double cpu0 = cpu_s();
    for (int i = 0; i < want_conns; i++) {
        int c = open_conn();
        if (c < 0) { perror("connect"); return 1; }
        give_back(c);
    }
    int64_t start = argc >= 8 && atoll(argv[7]) > 0 ? atoll(argv[7]) : now_ns() + 20000000;
    for (long i = 0; i < total; i++) intended[i] += start;
    arm(intended[0]);
    pthread_t sender;
    if (threads == 2) pthread_create(&sender, NULL, sending_thread, NULL);

    static char buf[READ_BUF];
    int64_t give_up = intended[total - 1] + 5000000000LL;
    struct epoll_event evs[256];
    while (answered + errors < total && now_ns() < give_up) {
        int k;
        if (wait_timed) {
            int64_t left = next_row < total ? intended[next_row] - now_ns() : 1000000000LL;
            if (left <= 0) {
                send_due();
                left = 0;             /* then take what is ready without sleeping */
            }
            struct timespec ts = {.tv_sec = left / 1000000000LL,
                                  .tv_nsec = left % 1000000000LL};
            k = epoll_pwait2(ep, evs, 256, &ts, NULL);
        } else {
            k = epoll_wait(ep, evs, 256, 1000);
        }
        for (int e = 0; e < k; e++) {
            if (evs[e].data.u64 == 0)
                send_due();       /* no read of the expiry count: re-arming resets it */
            else
                on_readable((int)evs[e].data.u64 - 1, buf, sizeof buf);
        }
    }
    if (threads == 2) pthread_join(sender, NULL);
    double cpu = cpu_s() - cpu0;
    FILE* out = fopen(argv[6], "wb");
    if (out == NULL) { perror(argv[6]); return 2; }
    fwrite(intended, sizeof(int64_t), next_row, out);
    fwrite(sent, sizeof(int64_t), next_row, out);
    fclose(out);
    printf("{\"requests\": %ld, \"answers\": %ld, \"errors\": %ld, \"cpu_s\": %.6f, "
           "\"connections\": %d}\n", next_row, (long)answered, (long)errors, cpu, nconns);
    return 0;
}
