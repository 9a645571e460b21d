/* calico-lite CNI shim: forwards one CNI call to the node agent over a unix socket.
 *
 * Why C: the runtime execs this on the host, which may have no Python, and an interpreter
 * start alone costs more than a whole ADD of the reference plugins. All logic lives in the
 * agent; this only frames env + stdin as one JSON object and relays "<code>\n<payload>".
 * Build: gcc -static -O2 -Wall -Wextra -o build/calico-lite plugin/shim/calico-lite-shim.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_STDIN (1024 * 1024)
#define MAX_REPLY (16 * 1024 * 1024)
#define DEFAULT_SOCKET "/var/run/calico-lite/cni.sock"

typedef struct { char *p; size_t len, cap; } buf_t;

static void buf_put(buf_t *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { fputs("calico-lite: out of memory\n", stderr); exit(1); }
        b->p = p; b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

/* Append s as a quoted JSON string; bytes >= 0x80 pass through (UTF-8 stays UTF-8). */
static void buf_json_str(buf_t *b, const char *s, size_t n) {
    char esc[8];
    buf_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; buf_put(b, esc, 2); }
        else if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); buf_put(b, esc, 6); }
        else buf_put(b, (const char *)&s[i], 1);
    }
    buf_put(b, "\"", 1);
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w; n -= (size_t)w;
    }
    return 0;
}

static const char *cni_version = "1.1.0";

/* Print a CNI error object on stdout and exit 1. */
static void fail(int code, const char *msg, const char *details) {
    buf_t b = {0};
    char num[16];
    buf_puts(&b, "{\"cniVersion\": ");
    buf_json_str(&b, cni_version, strlen(cni_version));
    snprintf(num, sizeof num, "%d", code);
    buf_puts(&b, ", \"code\": "); buf_puts(&b, num);
    buf_puts(&b, ", \"msg\": "); buf_json_str(&b, msg, strlen(msg));
    if (details) { buf_puts(&b, ", \"details\": "); buf_json_str(&b, details, strlen(details)); }
    buf_puts(&b, "}\n");
    write_all(1, b.p, b.len);
    exit(1);
}

/* Value of a top-level key (depth 1) in the JSON text, or NULL: nested objects such as
 * prevResult carry their own "cniVersion", so a plain substring search is not enough. */
static const char *find_key(const char *s, size_t n, const char *key) {
    size_t klen = strlen(key);
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '{' || s[i] == '[') depth++;
        else if (s[i] == '}' || s[i] == ']') depth--;
        else if (s[i] == '"') {
            size_t start = ++i;
            while (i < n && s[i] != '"') i += (s[i] == '\\') ? 2 : 1;
            if (i >= n) return NULL;
            if (depth != 1 || i - start != klen || memcmp(s + start, key, klen) != 0) continue;
            size_t j = i + 1;
            while (j < n && strchr(" \t\r\n", s[j]) && s[j]) j++;
            if (j >= n || s[j] != ':') continue;
            for (j++; j < n && strchr(" \t\r\n", s[j]) && s[j]; j++) {}
            return j < n ? s + j : NULL;
        }
    }
    return NULL;
}

/* Copy of a top-level string field (simple escapes undone), or NULL when absent. */
static char *string_field(const char *s, size_t n, const char *key) {
    const char *v = find_key(s, n, key), *end = s + n;
    if (!v || *v != '"') return NULL;
    buf_t b = {0};
    buf_put(&b, "", 0);
    for (v++; v < end && *v != '"'; v++) {
        if (*v == '\\' && v + 1 < end) v++;
        buf_put(&b, v, 1);
    }
    return b.p;
}

/* A JSON syntax check (no values kept): the end of the value starting at s[*i], or -1 with
 * *i at the offending byte. Why here: without a decodable config the shim cannot read
 * agent_socket, and the spec's answer to undecodable config is code 6, not "try again". */
static int json_skip_ws(const char *s, size_t n, size_t *i) {
    while (*i < n && strchr(" \t\r\n", s[*i]) && s[*i]) (*i)++;
    return *i < n;
}

static int json_value(const char *s, size_t n, size_t *i, int depth) {
    if (depth > 1000 || !json_skip_ws(s, n, i)) return -1;
    char c = s[*i];
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        (*i)++;
        if (json_skip_ws(s, n, i) && s[*i] == close) { (*i)++; return 0; }
        for (;;) {
            if (c == '{') {
                if (!json_skip_ws(s, n, i) || s[*i] != '"' || json_value(s, n, i, depth + 1)) return -1;
                if (!json_skip_ws(s, n, i) || s[*i] != ':') return -1;
                (*i)++;
            }
            if (json_value(s, n, i, depth + 1) || !json_skip_ws(s, n, i)) return -1;
            if (s[*i] == close) { (*i)++; return 0; }
            if (s[*i] != ',') return -1;
            (*i)++;
        }
    }
    if (c == '"') {
        for ((*i)++; *i < n && s[*i] != '"'; (*i)++) {
            if ((unsigned char)s[*i] < 0x20) return -1;
            if (s[*i] != '\\') continue;
            if (++(*i) >= n || !strchr("\"\\/bfnrtu", s[*i]) || !s[*i]) return -1;
            if (s[*i] == 'u')
                for (int k = 0; k < 4; k++)
                    if (*i + 1 >= n || !strchr("0123456789abcdefABCDEF", s[++(*i)]) || !s[*i]) return -1;
        }
        if (*i >= n) return -1;
        (*i)++;
        return 0;
    }
    static const char *words[] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++) {
        size_t len = strlen(words[k]);
        if (n - *i >= len && memcmp(s + *i, words[k], len) == 0) { *i += len; return 0; }
    }
    size_t start = *i;   /* a number: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)? */
    if (s[*i] == '-') (*i)++;
    if (*i < n && s[*i] == '0') (*i)++;
    else if (*i < n && s[*i] >= '1' && s[*i] <= '9') while (*i < n && s[*i] >= '0' && s[*i] <= '9') (*i)++;
    else { *i = start; return -1; }
    if (*i < n && s[*i] == '.') {
        if (++(*i) >= n || s[*i] < '0' || s[*i] > '9') return -1;
        while (*i < n && s[*i] >= '0' && s[*i] <= '9') (*i)++;
    }
    if (*i < n && (s[*i] == 'e' || s[*i] == 'E')) {
        if (++(*i) < n && (s[*i] == '+' || s[*i] == '-')) (*i)++;
        if (*i >= n || s[*i] < '0' || s[*i] > '9') return -1;
        while (*i < n && s[*i] >= '0' && s[*i] <= '9') (*i)++;
    }
    return 0;
}

/* Code 6 unless stdin is empty or starts with a JSON object (what follows it, the agent
 * judges: it answers code 6 too). */
static void require_json_object(const char *s, size_t n) {
    size_t i = 0;
    char msg[160];
    if (!json_skip_ws(s, n, &i)) return;
    int object = s[i] == '{', ok = json_value(s, n, &i, 0) == 0;
    if (ok && object) return;
    if (ok) snprintf(msg, sizeof msg, "network config on stdin must be a JSON object");
    else if (i >= n) snprintf(msg, sizeof msg, "network config on stdin is not valid JSON: "
                              "it ends at byte %zu in the middle of a value", n);
    else snprintf(msg, sizeof msg, "network config on stdin is not valid JSON: unexpected "
                  "byte 0x%02x at offset %zu", (unsigned char)s[i], i);
    fail(6, msg, "the runtime passes the network configuration (a JSON object) on stdin");
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for events on fd until the deadline; 0 when ready, -1 on timeout. */
static int wait_fd(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) return -1;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -1;
    }
}

int main(void) {
    static const char *vars[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS",
                                 "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"};
    const char *command = getenv("CNI_COMMAND");
    buf_t in = {0}, req = {0}, reply = {0}, msg = {0};
    char chunk[65536];
    ssize_t r;

    buf_put(&in, "", 0);
    while ((command || !isatty(0)) && in.len <= MAX_STDIN) {
        r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        buf_put(&in, chunk, (size_t)r);
    }
    char *v = string_field(in.p, in.len, "cniVersion");
    if (v && *v) cni_version = v;
    if (in.len > MAX_STDIN) fail(6, "network configuration on stdin exceeds 1 MiB", NULL);
    if (!command) fail(4, "CNI_COMMAND is not set", "the calico-lite CNI plugin is run by a container runtime");
    if (strcmp(command, "VERSION") == 0) {
        buf_puts(&msg, "{\"cniVersion\":");
        buf_json_str(&msg, cni_version, strlen(cni_version));
        buf_puts(&msg, ",\"supportedVersions\":[\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n");
        return write_all(1, msg.p, msg.len) ? 1 : 0;
    }

    require_json_object(in.p, in.len);
    const char *sock = getenv("CALICO_LITE_AGENT_SOCKET");
    if (!sock || !*sock) sock = string_field(in.p, in.len, "agent_socket");
    if (!sock || !*sock) sock = DEFAULT_SOCKET;
    const char *t = find_key(in.p, in.len, "agent_timeout");
    double timeout = t ? strtod(t + (*t == '"'), NULL) : 0;
    if (!(timeout > 0 && timeout < 86400)) timeout = 30;
    long long deadline = now_ms() + (long long)(timeout * 1000);

    buf_puts(&req, "{\"env\": {");
    for (size_t i = 0, n = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *val = getenv(vars[i]);
        if (!val) continue;
        if (n++) buf_puts(&req, ", ");
        buf_json_str(&req, vars[i], strlen(vars[i]));
        buf_puts(&req, ": ");
        buf_json_str(&req, val, strlen(val));
    }
    buf_puts(&req, "}, \"stdin\": ");
    buf_json_str(&req, in.p, in.len);
    buf_puts(&req, "}\n");

    /* Connect without blocking: a missing socket or a dead agent must fail at once. */
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = 0;
    if (fd < 0) err = errno;
    else if (strlen(sock) >= sizeof addr.sun_path) err = ENAMETOOLONG;
    else {
        memcpy(addr.sun_path, sock, strlen(sock) + 1);
        while (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN || now_ms() >= deadline) { err = errno; break; }
            poll(NULL, 0, 5); /* backlog full: the agent is up but busy, wait for it */
        }
    }
    if (err) {
        buf_puts(&msg, "calico-lite agent not reachable at ");
        buf_puts(&msg, sock); buf_puts(&msg, ": "); buf_puts(&msg, strerror(err));
        /* STATUS asks whether ADDs can be served: with no agent they cannot (spec code 50) */
        fail(strcmp(command, "STATUS") ? 11 : 50, msg.p,
             "is the calico-lite node agent running on this node?");
    }

    const char *phase = "sending the request";
    for (size_t off = 0; off < req.len;) {
        if (wait_fd(fd, POLLOUT, deadline)) goto timeout;
        ssize_t w = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);
        if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (w < 0) { err = errno; goto broken; }
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    phase = "reading the reply";
    for (;;) {
        if (wait_fd(fd, POLLIN, deadline)) goto timeout;
        r = read(fd, chunk, sizeof chunk);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r < 0) { err = errno; goto broken; }
        if (r == 0) break;
        if (reply.len + (size_t)r > MAX_REPLY) { err = EMSGSIZE; goto broken; }
        buf_put(&reply, chunk, (size_t)r);
    }
    close(fd);

    char *nl = reply.len ? memchr(reply.p, '\n', reply.len) : NULL;
    size_t digits = nl ? (size_t)(nl - reply.p) : 0;
    int code = 0;
    for (size_t i = 0; i < digits && digits <= 3; i++)
        code = (reply.p[i] >= '0' && reply.p[i] <= '9') ? code * 10 + reply.p[i] - '0' : 256;
    if (!nl || digits == 0 || digits > 3 || code > 255) {
        buf_puts(&msg, "malformed reply from calico-lite agent at ");
        buf_puts(&msg, sock);
        buf_puts(&msg, reply.len ? ": no exit-code line" : ": empty reply");
        fail(11, msg.p, "the agent must answer '<exit code>\\n<payload>'");
    }
    if (write_all(1, nl + 1, reply.len - digits - 1)) return 1;
    return code;

timeout:
    snprintf(chunk, sizeof chunk, "calico-lite agent at %s did not answer within %g s (%s)",
             sock, timeout, phase);
    fail(11, chunk, "the node agent may be overloaded or stuck; the runtime will retry");
broken:
    snprintf(chunk, sizeof chunk, "calico-lite agent at %s: connection failed while %s: %s",
             sock, phase, strerror(err));
    fail(11, chunk, "the node agent may have restarted; the runtime will retry");
    return 1;
}
