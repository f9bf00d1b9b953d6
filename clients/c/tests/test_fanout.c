/* Tests of libfanout against a real fanoutd started on a temporary socket.
 * $FANOUTD names the daemon binary (default ../../.build/debug/fanoutd).
 * The last line printed is "N passed, N failed"; the exit status is 0 only
 * when nothing failed. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fanout.h"
#include "fanout/v1/fanout.pb-c.h"

static int passed, failed;
static char dir[64], sock_path[128], db_path[128], log_path[128], config_path[128];

/* Agents besides echo, with long names: an unknown agent's message lists
 * them all, which makes a server message of more than 10,000 bytes. */
#define EXTRA_AGENTS 120
#define SUBSCRIBER_BUFFER 100
static const char *fanoutd;
static pid_t daemon_pid = -1;

#define FRAME_LIMIT 262144
#define PAYLOAD_LIMIT 65536

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (cond) {                                                          \
            passed++;                                                        \
        } else {                                                             \
            failed++;                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

/* Evaluates `got` once. */
#define CHECK_ST(c, got, want)                                                                       \
    do {                                                                                             \
        fanout_status got_ = (got), want_ = (want);                                                  \
        CHECK(got_ == want_, "got %s, want %s (%s)", fanout_status_string(got_),                     \
              fanout_status_string(want_), (c) ? fanout_client_last_message(c) : "");                \
    } while (0)

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- the daemon ---------------------------------------------------------- */

static int socket_answers(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    size_t n = strlen(sock_path);
    if (n >= sizeof a.sun_path) {
        close(fd);
        return 0;
    }
    memcpy(a.sun_path, sock_path, n + 1);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static void agent_name(char *buf, size_t size, int i)
{
    snprintf(buf, size, "agent-%03d-%s", i,
             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
}

static int write_config(void)
{
    FILE *f = fopen(config_path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "{\"subscriber_buffer\":%d,\"agents\":[{\"name\":\"echo\",\"runner\":\"echo\",\"concurrency\":64}",
            SUBSCRIBER_BUFFER);
    for (int i = 0; i < EXTRA_AGENTS; i++) {
        char name[128];
        agent_name(name, sizeof name, i);
        fprintf(f, ",{\"name\":\"%s\",\"runner\":\"echo\"}", name);
    }
    fprintf(f, "]}\n");
    return fclose(f) == 0 ? 0 : -1;
}

static int start_daemon(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* If the test dies (a sanitizer abort), the daemon goes with it. */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
            _exit(126);
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execl(fanoutd, fanoutd, "--socket", sock_path, "--db", db_path, "--config", config_path,
              "--max-frame-bytes", "262144",
              "--max-payload-bytes", "65536", "--log-level", "warning", (char *)NULL);
        _exit(127);
    }
    daemon_pid = pid;
    for (int i = 0; i < 300; i++) {
        if (socket_answers())
            return 0;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            daemon_pid = -1;
            return -1;
        }
        sleep_ms(50);
    }
    return -1;
}

static void stop_daemon(int sig)
{
    if (daemon_pid <= 0)
        return;
    kill(daemon_pid, sig);
    int status;
    while (waitpid(daemon_pid, &status, 0) < 0 && errno == EINTR) {
    }
    daemon_pid = -1;
}

/* Sends `sig` to the daemon after `ms`, from a helper process. */
static pid_t kill_later(int sig, long ms)
{
    pid_t target = daemon_pid;
    pid_t pid = fork();
    if (pid == 0) {
        sleep_ms(ms);
        kill(target, sig);
        _exit(0);
    }
    return pid;
}

static void reap(pid_t helper)
{
    int status;
    if (helper > 0)
        while (waitpid(helper, &status, 0) < 0 && errno == EINTR) {
        }
    if (daemon_pid > 0) {
        while (waitpid(daemon_pid, &status, 0) < 0 && errno == EINTR) {
        }
        daemon_pid = -1;
    }
}

static fanout_client *connect_client(void)
{
    fanout_client *c = NULL;
    fanout_status st = fanout_client_new(&c);
    CHECK_ST(NULL, st, FANOUT_OK);
    if (st != FANOUT_OK)
        return NULL;
    st = fanout_client_connect(c, sock_path, "fanout-c-test");
    CHECK_ST(c, st, FANOUT_OK);
    if (st != FANOUT_OK) {
        fanout_client_free(c);
        return NULL;
    }
    return c;
}

/* Polls GetBatch until the batch is terminal (or 20 s). */
static fanout_batch_info *wait_batch(fanout_client *c, uint64_t id)
{
    for (int i = 0; i < 400; i++) {
        fanout_batch_info *b = NULL;
        fanout_status st = fanout_get_batch(c, id, &b);
        if (st != FANOUT_OK) {
            CHECK_ST(c, st, FANOUT_OK);
            return NULL;
        }
        if (b->status >= FANOUT_BATCH_COMPLETED)
            return b;
        fanout_batch_info_free(b);
        sleep_ms(50);
    }
    CHECK(0, "batch %llu did not finish", (unsigned long long)id);
    return NULL;
}

static fanout_task_spec spec(const char *id, const char *payload)
{
    fanout_task_spec t;
    memset(&t, 0, sizeof t);
    t.custom_id = id;
    t.payload = payload;
    t.payload_len = payload ? strlen(payload) : 0;
    return t;
}

/* ---- tests without a daemon ----------------------------------------------- */

static void test_status_codes(void)
{
    CHECK(FANOUT_NOT_FOUND == (int)FANOUT__V1__STATUS_CODE__NOT_FOUND, "NOT_FOUND number");
    CHECK(FANOUT_UNAUTHENTICATED == (int)FANOUT__V1__STATUS_CODE__UNAUTHENTICATED, "UNAUTHENTICATED number");
    CHECK(FANOUT_RESOURCE_EXHAUSTED == (int)FANOUT__V1__STATUS_CODE__RESOURCE_EXHAUSTED, "number");
    CHECK(strcmp(fanout_status_string(FANOUT_OK), "OK") == 0, "OK name");
    CHECK(strcmp(fanout_status_string(FANOUT_INVALID_ARGUMENT), "INVALID_ARGUMENT") == 0, "name");
    CHECK(strcmp(fanout_status_string(FANOUT_CONNECT_FAILED), "CONNECT_FAILED") == 0, "name");
    CHECK(strcmp(fanout_status_string((fanout_status)999), "UNKNOWN_STATUS") == 0, "unknown name");
}

static void expect_path(const char *want)
{
    char *p = NULL;
    fanout_status st = fanout_default_socket_path(&p);
    CHECK_ST(NULL, st, FANOUT_OK);
    CHECK(p != NULL && strcmp(p, want) == 0, "default path %s, want %s", p ? p : "(null)", want);
    fanout_string_free(p);
}

static void test_default_socket_path(void)
{
    const char *names[] = { "FANOUT_SOCKET", "XDG_RUNTIME_DIR", "TMPDIR" };
    char *saved[3];
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(names[i]);
        saved[i] = v ? strdup(v) : NULL;
    }
    char want[128];
    unsigned long uid = (unsigned long)getuid();

    setenv("FANOUT_SOCKET", "/x/explicit.sock", 1);
    setenv("XDG_RUNTIME_DIR", "/run/user/7", 1);
    expect_path("/x/explicit.sock");
    setenv("FANOUT_SOCKET", "", 1);
    expect_path("/run/user/7/fanout/fanoutd.sock");
    setenv("XDG_RUNTIME_DIR", "", 1);
    setenv("TMPDIR", "/var/tmp/", 1);
    snprintf(want, sizeof want, "/var/tmp/fanout-%lu/fanoutd.sock", uid);
    expect_path(want);
    unsetenv("TMPDIR");
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("FANOUT_SOCKET");
    snprintf(want, sizeof want, "/tmp/fanout-%lu/fanoutd.sock", uid);
    expect_path(want);
    setenv("TMPDIR", "", 1);
    expect_path(want);
    CHECK_ST(NULL, fanout_default_socket_path(NULL), FANOUT_BAD_ARGUMENT);

    for (int i = 0; i < 3; i++) {
        if (saved[i]) {
            setenv(names[i], saved[i], 1);
            free(saved[i]);
        } else {
            unsetenv(names[i]);
        }
    }
}

static void test_null_handles(void)
{
    fanout_batch_info *b = (fanout_batch_info *)1;
    CHECK_ST(NULL, fanout_client_new(NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_client_connect(NULL, sock_path, "x"), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_get_batch(NULL, 1, &b), FANOUT_BAD_ARGUMENT);
    CHECK(b == NULL, "out cleared on failure");
    CHECK_ST(NULL, fanout_enqueue_task(NULL, "o", NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_enqueue_batch(NULL, "o", "echo", NULL, 0, NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_get_task(NULL, 1, 0, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_list_batches(NULL, NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_cancel_batch(NULL, 1, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_cancel_task(NULL, 1, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_retry_failed(NULL, 1, 0, 0, NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_get_server_info(NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_results_open(NULL, 1, 0, 0, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_results_next(NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_subscribe(NULL, NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_subscription_next(NULL, 0, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_client_set_timeout(NULL, 5), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_client_limits(NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK(fanout_client_fd(NULL) == -1, "fd of NULL");
    CHECK(strcmp(fanout_client_last_message(NULL), "") == 0, "message of NULL");
    CHECK(fanout_subscription_lagged(NULL) == 0 && fanout_subscription_last_sequence(NULL) == 0, "NULL sub");
    fanout_client_free(NULL);
    fanout_results_free(NULL);
    fanout_subscription_free(NULL);
    fanout_batch_info_free(NULL);
    fanout_batch_list_free(NULL);
    fanout_task_info_free(NULL);
    fanout_server_info_free(NULL);
    fanout_string_free(NULL);
}

static void test_not_running(void)
{
    fanout_client *c = NULL;
    CHECK_ST(NULL, fanout_client_new(&c), FANOUT_OK);
    if (c == NULL)
        return;
    CHECK(fanout_client_fd(c) == -1, "fd before connect");
    fanout_status st = fanout_client_connect(c, sock_path, "t");
    CHECK_ST(c, st, FANOUT_CONNECT_FAILED);
    CHECK(strstr(fanout_client_last_message(c), sock_path) != NULL, "message names the path: %s",
          fanout_client_last_message(c));
    CHECK_ST(c, fanout_get_batch(c, 1, NULL), FANOUT_IO_ERROR);
    char long_path[200];
    memset(long_path, 'a', sizeof long_path - 1);
    long_path[sizeof long_path - 1] = '\0';
    CHECK_ST(c, fanout_client_connect(c, long_path, "t"), FANOUT_CONNECT_FAILED);
    fanout_client_free(c);
}

/* ---- a scripted fake daemon, for what a real one never sends --------------- */

/* Listens on dir/fake.sock; a child accepts one connection, reads the Hello,
 * writes `reply` (reply_len bytes), then waits for the client to close. */
static pid_t fake_server(const unsigned char *reply, size_t reply_len, char *path, size_t path_size)
{
    snprintf(path, path_size, "%s/fake.sock", dir);
    unlink(path);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (lfd < 0)
        return -1;
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof a.sun_path) {
        close(lfd);
        return -1;
    }
    memcpy(a.sun_path, path, n + 1);
    unlink(path);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1) != 0) {
        close(lfd);
        return -1;
    }
    pid_t pid = fork();
    if (pid != 0) {
        close(lfd);
        return pid;
    }
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        _exit(1);
    unsigned char buf[256];
    ssize_t got = read(fd, buf, sizeof buf); /* the Hello */
    (void)got;
    size_t done = 0;
    while (done < reply_len) {
        ssize_t w = write(fd, reply + done, reply_len - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    while (read(fd, buf, sizeof buf) > 0) { /* until the client closes */
    }
    _exit(0);
}

static void fake_case(const char *what, const unsigned char *reply, size_t len, int timeout_ms, fanout_status want,
                      const char *want_text)
{
    char path[128];
    pid_t pid = fake_server(reply, len, path, sizeof path);
    CHECK(pid > 0, "fake server for %s", what);
    if (pid <= 0)
        return;
    fanout_client *c = NULL;
    CHECK_ST(NULL, fanout_client_new(&c), FANOUT_OK);
    if (c != NULL) {
        fanout_client_set_timeout(c, timeout_ms);
        fanout_status st = fanout_client_connect(c, path, "fake");
        CHECK(st == want, "%s: got %s, want %s (%s)", what, fanout_status_string(st), fanout_status_string(want),
              fanout_client_last_message(c));
        if (want_text != NULL)
            CHECK(strstr(fanout_client_last_message(c), want_text) != NULL, "%s: message %s", what,
                  fanout_client_last_message(c));
        if (want == FANOUT_OK)
            CHECK(fanout_client_fd(c) >= 0 && strcmp(fanout_client_server_version(c), "0.1.0") == 0, "%s: connected",
                  what);
        else
            CHECK(fanout_client_fd(c) == -1, "%s: not connected after failure", what);
        fanout_client_free(c);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    unlink(path);
}

static void test_fake_server(void)
{
    /* A header announcing ~2 GiB: refused from the header alone. */
    static const unsigned char huge[] = { 0x7f, 0xff, 0xff, 0xff, 0x00 };
    fake_case("oversize frame", huge, sizeof huge, 2000, FANOUT_PROTOCOL_ERROR, "above the limit");
    /* EndOfStream{FAILED_PRECONDITION, "v"} on stream 0 instead of Welcome. */
    static const unsigned char refused[] = { 0, 0, 0, 9, 0x32, 0x07, 0x0a, 0x05, 0x08, 0x09, 0x12, 0x01, 'v' };
    fake_case("handshake refused", refused, sizeof refused, 2000, FANOUT_FAILED_PRECONDITION, "v");
    /* A body that is not a Frame (a truncated length-delimited field). */
    static const unsigned char garbage[] = { 0, 0, 0, 3, 0x12, 0x7f, 0x00 };
    fake_case("undecodable frame", garbage, sizeof garbage, 2000, FANOUT_PROTOCOL_ERROR, "undecodable");
    /* Nothing at all: the client's timeout. */
    fake_case("silent server", NULL, 0, 200, FANOUT_TIMEOUT, NULL);
    /* Half a frame, then silence: still a timeout, no crash. */
    static const unsigned char half[] = { 0, 0, 0, 0x12, 0x1a, 0x10 };
    fake_case("half a frame", half, sizeof half, 200, FANOUT_TIMEOUT, NULL);
    /* The Welcome of PROTOCOL.md §11, byte for byte: the handshake succeeds. */
    static const unsigned char welcome[] = { 0, 0, 0, 0x12, 0x1a, 0x10, 0x0a, 0x0e, 0x0a, 0x05, '0', '.', '1', '.', '0',
                                             0x10, 0x01, 0x18, 0x80, 0x80, 0x80, 0x02 };
    fake_case("worked-example welcome", welcome, sizeof welcome, 2000, FANOUT_OK, NULL);
}

/* A socket owned by another uid is refused unless FANOUT_SOCKET_OWNERS
 * trusts it (only testable as root, who can chown the socket). */
static void test_socket_owner(void)
{
    if (getuid() != 0) {
        printf("socket owner test skipped (not root)\n");
        return;
    }
    static const unsigned char welcome[] = { 0, 0, 0, 0x12, 0x1a, 0x10, 0x0a, 0x0e, 0x0a, 0x05, '0', '.', '1', '.', '0',
                                             0x10, 0x01, 0x18, 0x80, 0x80, 0x80, 0x02 };
    const char *saved = getenv("FANOUT_SOCKET_OWNERS");
    char *keep = saved ? strdup(saved) : NULL;
    const char *settings[] = { NULL, "1,2", "4242", " any " };
    const fanout_status want[] = { FANOUT_PERMISSION_DENIED, FANOUT_PERMISSION_DENIED, FANOUT_OK, FANOUT_OK };
    for (int i = 0; i < 4; i++) {
        char path[128];
        pid_t pid = fake_server(welcome, sizeof welcome, path, sizeof path);
        CHECK(pid > 0 && chown(path, 4242, 4242) == 0, "fake socket owned by 4242");
        if (settings[i])
            setenv("FANOUT_SOCKET_OWNERS", settings[i], 1);
        else
            unsetenv("FANOUT_SOCKET_OWNERS");
        fanout_client *c = NULL;
        fanout_client_new(&c);
        fanout_status st = fanout_client_connect(c, path, "owner");
        CHECK(st == want[i], "owners %s: %s (%s)", settings[i] ? settings[i] : "(unset)", fanout_status_string(st),
              fanout_client_last_message(c));
        if (st == FANOUT_PERMISSION_DENIED)
            CHECK(strstr(fanout_client_last_message(c), "FANOUT_SOCKET_OWNERS=4242") != NULL, "says how to trust it");
        fanout_client_free(c);
        if (st != FANOUT_OK && pid > 0) { /* it is still waiting for a connection */
            int fd = socket(AF_UNIX, SOCK_STREAM, 0);
            struct sockaddr_un a;
            memset(&a, 0, sizeof a);
            a.sun_family = AF_UNIX;
            memcpy(a.sun_path, path, strlen(path) + 1);
            if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
                unsigned char hello[] = { 0, 0, 0, 0 };
                ssize_t w = write(fd, hello, sizeof hello);
                (void)w;
            }
            if (fd >= 0)
                close(fd);
        }
        int status;
        while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        unlink(path);
    }
    if (keep) {
        setenv("FANOUT_SOCKET_OWNERS", keep, 1);
        free(keep);
    } else {
        unsetenv("FANOUT_SOCKET_OWNERS");
    }
}

/* ---- tests against the daemon --------------------------------------------- */

static void test_handshake_and_info(fanout_client *c)
{
    CHECK(fanout_client_fd(c) >= 0, "fd");
    CHECK(fanout_client_server_version(c)[0] != '\0', "server version");
    fanout_limits lim;
    CHECK_ST(c, fanout_client_limits(c, &lim), FANOUT_OK);
    CHECK(lim.max_frame_bytes == FRAME_LIMIT, "max_frame_bytes adopted: %u", lim.max_frame_bytes);
    CHECK(lim.max_payload_bytes == PAYLOAD_LIMIT, "max_payload_bytes %u", lim.max_payload_bytes);

    fanout_server_info *info = NULL;
    fanout_status st = fanout_get_server_info(c, &info);
    CHECK_ST(c, st, FANOUT_OK);
    if (info != NULL) {
        int echo = 0;
        for (size_t i = 0; i < info->n_agents; i++)
            echo |= strcmp(info->agents[i].name, "echo") == 0;
        CHECK(echo, "agent echo listed");
        CHECK(info->protocol_version == 1, "protocol version");
        CHECK(info->limits.max_frame_bytes == FRAME_LIMIT, "limits in server info");
        CHECK(info->connections >= 1, "connections");
    }
    fanout_server_info_free(info);
    CHECK(strcmp(fanout_client_last_message(c), "") == 0, "no message after success");
    CHECK_ST(c, fanout_client_connect(c, sock_path, "again"), FANOUT_BAD_ARGUMENT);
}

static void test_task(fanout_client *c)
{
    fanout_task_spec t = spec("one", "{\"x\":1}");
    t.agent = "echo";
    fanout_task_info *task = NULL;
    fanout_status st = fanout_enqueue_task(c, "c-task", &t, &task);
    CHECK_ST(c, st, FANOUT_OK);
    if (task == NULL)
        return;
    CHECK(task->id != 0 && task->batch_id != 0, "ids");
    CHECK(strcmp(task->custom_id, "one") == 0, "custom id %s", task->custom_id);
    uint64_t id = task->id, batch = task->batch_id;
    fanout_task_info_free(task);
    fanout_batch_info *b = wait_batch(c, batch);
    CHECK(b != NULL && b->status == FANOUT_BATCH_COMPLETED, "batch of the task completed");
    fanout_batch_info_free(b);

    task = NULL;
    st = fanout_get_task(c, id, 1, &task);
    CHECK_ST(c, st, FANOUT_OK);
    if (task != NULL) {
        CHECK(task->status == FANOUT_TASK_COMPLETED, "status %d", task->status);
        CHECK(task->result_len == 7 && memcmp(task->result, "{\"x\":1}", 7) == 0, "echo result");
        CHECK(task->payload_len == 7 && memcmp(task->payload, "{\"x\":1}", 7) == 0, "payload");
        CHECK(task->error.has_error == 0 && task->error.message[0] == '\0', "no error");
        CHECK(strcmp(task->owner_id, "c-task") == 0, "owner");
    }
    fanout_task_info_free(task);
    task = NULL;
    st = fanout_get_task(c, id, 0, &task);
    CHECK_ST(c, st, FANOUT_OK);
    CHECK(task != NULL && task->payload == NULL && task->payload_len == 0, "no payload unless asked");
    fanout_task_info_free(task);

    CHECK_ST(c, fanout_get_task(c, 987654321, 0, &task), FANOUT_NOT_FOUND);
    CHECK(task == NULL, "out stays NULL");
    CHECK(fanout_client_last_message(c)[0] != '\0', "NOT_FOUND has a message");
    /* A task without an agent is the daemon's INVALID_ARGUMENT. */
    fanout_task_spec noagent = spec("x", "{}");
    CHECK_ST(c, fanout_enqueue_task(c, "c-task", &noagent, NULL), FANOUT_INVALID_ARGUMENT);
}

static void test_batch_results_subscribe(fanout_client *c)
{
    enum { N = 10 };
    fanout_task_spec tasks[N];
    char ids[N][16], payloads[N][32];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "row-%d", i);
        snprintf(payloads[i], sizeof payloads[i], "{\"row\":%d}", i);
        tasks[i] = spec(ids[i], payloads[i]);
    }
    fanout_kv meta[] = { { "project", "c-client" }, { "run", "1" } };
    fanout_batch_options opts = { .metadata = meta, .n_metadata = 2, .priority = 3 };
    fanout_batch_info *b = NULL;
    fanout_status st = fanout_enqueue_batch(c, "c-batch", "echo", tasks, N, &opts, &b);
    CHECK_ST(c, st, FANOUT_OK);
    if (b == NULL)
        return;
    CHECK(b->counts.total == N, "total %u", b->counts.total);
    CHECK(b->n_metadata == 2 && strcmp(b->metadata[0].key, "project") == 0 &&
              strcmp(b->metadata[0].value, "c-client") == 0, "metadata");
    CHECK(strcmp(b->owner_id, "c-batch") == 0 && strcmp(b->agent, "echo") == 0, "owner/agent");
    CHECK(b->creator_uid == (uint32_t)getuid(), "creator uid");
    uint64_t id = b->id;
    fanout_batch_info_free(b);
    b = wait_batch(c, id);
    CHECK(b != NULL && b->status == FANOUT_BATCH_COMPLETED && b->counts.completed == N && b->progress == 100.0,
          "completed with counts");
    fanout_batch_info_free(b);

    /* Results, 3 per page: all 10, in task id order, results = payloads. */
    fanout_results *r = NULL;
    st = fanout_results_open(c, id, 3, 0, &r);
    CHECK_ST(c, st, FANOUT_OK);
    int n = 0, ordered = 1, echoed = 1;
    uint64_t last = 0, fourth = 0;
    const fanout_task_result *res = NULL;
    while ((st = fanout_results_next(r, &res)) == FANOUT_OK) {
        ordered &= res->task_id > last;
        last = res->task_id;
        int row = atoi(res->custom_id + 4);
        echoed &= row >= 0 && row < N && res->result_len == strlen(payloads[row]) &&
                  memcmp(res->result, payloads[row], res->result_len) == 0 && res->status == FANOUT_TASK_COMPLETED;
        if (++n == 4)
            fourth = res->task_id;
    }
    CHECK_ST(c, st, FANOUT_DONE);
    CHECK(n == N, "%d results", n);
    CHECK(ordered && echoed, "ordered %d echoed %d", ordered, echoed);
    CHECK_ST(c, fanout_results_next(r, &res), FANOUT_DONE);
    fanout_results_free(r);

    /* Resume after the 4th: 6 left. */
    r = NULL;
    CHECK_ST(c, fanout_results_open(c, id, 0, fourth, &r), FANOUT_OK);
    n = 0;
    while ((st = fanout_results_next(r, &res)) == FANOUT_OK)
        n++;
    CHECK(st == FANOUT_DONE && n == N - 4, "resumed: %d (%s)", n, fanout_status_string(st));
    fanout_results_free(r);

    /* Pages cut by bytes: a tiny budget still brings every result, one per page, in order. */
    r = NULL;
    CHECK_ST(c, fanout_results_open_paged(c, id, 0, 1, 0, &r), FANOUT_OK);
    n = 0;
    uint64_t previous = 0;
    int increasing = 1;
    while ((st = fanout_results_next(r, &res)) == FANOUT_OK) {
        increasing = increasing && res->task_id > previous;
        previous = res->task_id;
        n++;
    }
    CHECK(st == FANOUT_DONE && n == N && increasing, "paged by bytes: %d (%s), increasing %d", n, fanout_status_string(st),
          increasing);
    fanout_results_free(r);

    /* Abandoned half-way: freed with a Cancel; the connection goes on. */
    r = NULL;
    CHECK_ST(c, fanout_results_open(c, id, 2, 0, &r), FANOUT_OK);
    CHECK_ST(c, fanout_results_next(r, &res), FANOUT_OK);
    fanout_results_free(r);

    /* Unknown batch: the error arrives with the first next(). */
    r = NULL;
    CHECK_ST(c, fanout_results_open(c, 987654321, 0, 0, &r), FANOUT_OK);
    CHECK_ST(c, fanout_results_next(r, &res), FANOUT_NOT_FOUND);
    CHECK_ST(c, fanout_results_next(r, &res), FANOUT_NOT_FOUND);
    fanout_results_free(r);

    /* Replay of the batch's events, then DONE. */
    fanout_subscription *s = NULL;
    fanout_subscribe_options so = { .batch_id = id };
    CHECK_ST(c, fanout_subscribe(c, &so, &s), FANOUT_OK);
    const fanout_event *ev = NULL;
    int completed = 0, events = 0;
    uint64_t seq = 0;
    while ((st = fanout_subscription_next(s, 5000, &ev)) == FANOUT_OK) {
        events++;
        CHECK(ev->sequence > seq, "sequence increases");
        seq = ev->sequence;
        CHECK(ev->batch_id == id, "batch id of event");
        if (ev->type == FANOUT_EVENT_BATCH_COMPLETED) {
            completed = 1;
            CHECK(ev->counts.completed == N && ev->progress == 100.0, "completed event counts");
        }
    }
    CHECK_ST(c, st, FANOUT_DONE);
    CHECK(completed && events >= N, "replayed %d events, completed %d", events, completed);
    CHECK(fanout_subscription_last_sequence(s) == seq && !fanout_subscription_lagged(s), "last sequence");
    fanout_subscription_free(s);

    /* Only some types. */
    s = NULL;
    fanout_event_type types[] = { FANOUT_EVENT_TASK_COMPLETED };
    fanout_subscribe_options so2 = { .batch_id = id, .event_types = types, .n_event_types = 1 };
    CHECK_ST(c, fanout_subscribe(c, &so2, &s), FANOUT_OK);
    n = 0;
    int only = 1;
    while ((st = fanout_subscription_next(s, 5000, &ev)) == FANOUT_OK) {
        n++;
        only &= ev->type == FANOUT_EVENT_TASK_COMPLETED && ev->custom_id[0] != '\0';
    }
    CHECK(st == FANOUT_DONE && n == N && only, "filtered: %d events (%s)", n, fanout_status_string(st));
    fanout_subscription_free(s);

    /* Unknown batch. */
    s = NULL;
    fanout_subscribe_options so3 = { .batch_id = 987654321 };
    CHECK_ST(c, fanout_subscribe(c, &so3, &s), FANOUT_OK);
    CHECK_ST(c, fanout_subscription_next(s, 5000, &ev), FANOUT_NOT_FOUND);
    fanout_subscription_free(s);
}

static void test_list(fanout_client *c)
{
    fanout_task_spec t = spec("a", "{}");
    for (int i = 0; i < 3; i++)
        CHECK_ST(c, fanout_enqueue_batch(c, "c-list", "echo", &t, 1, NULL, NULL), FANOUT_OK);
    fanout_list_options o = { .owner_id = "c-list", .limit = 2 };
    fanout_batch_list *l = NULL;
    CHECK_ST(c, fanout_list_batches(c, &o, &l), FANOUT_OK);
    if (l == NULL)
        return;
    CHECK(l->n_batches == 2 && l->next_before_id != 0, "first page: %zu, next %llu", l->n_batches,
          (unsigned long long)l->next_before_id);
    if (l->n_batches == 2)
        CHECK(l->batches[0]->id > l->batches[1]->id && strcmp(l->batches[0]->owner_id, "c-list") == 0,
              "newest first");
    o.before_id = l->next_before_id;
    fanout_batch_list_free(l);
    l = NULL;
    CHECK_ST(c, fanout_list_batches(c, &o, &l), FANOUT_OK);
    CHECK(l != NULL && l->n_batches == 1, "second page: %zu", l ? l->n_batches : 0);
    fanout_batch_list_free(l);
    l = NULL;
    fanout_list_options none = { .owner_id = "nobody-has-this-owner" };
    CHECK_ST(c, fanout_list_batches(c, &none, &l), FANOUT_OK);
    CHECK(l != NULL && l->n_batches == 0 && l->next_before_id == 0, "empty list");
    fanout_batch_list_free(l);
    l = NULL;
    CHECK_ST(c, fanout_list_batches(c, NULL, &l), FANOUT_OK);
    CHECK(l != NULL && l->n_batches >= 3, "all owners");
    fanout_batch_list_free(l);
}

static void test_chunked(fanout_client *c)
{
    /* ~1 MB of payloads through a 256 KiB frame limit: several chunks. */
    enum { N = 1000 };
    static char payload[1001];
    memset(payload, ' ', 1000);
    payload[0] = '{';
    payload[999] = '}';
    payload[1000] = '\0';
    fanout_task_spec *tasks = calloc(N, sizeof *tasks);
    char (*ids)[24] = calloc(N, sizeof *ids);
    if (tasks == NULL || ids == NULL) {
        CHECK(0, "calloc");
        free(tasks);
        free(ids);
        return;
    }
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "c-%d", i);
        tasks[i] = spec(ids[i], payload);
    }
    fanout_batch_info *b = NULL;
    fanout_status st = fanout_enqueue_batch(c, "c-chunked", "echo", tasks, N, NULL, &b);
    CHECK_ST(c, st, FANOUT_OK);
    CHECK(b != NULL && b->counts.total == N, "chunked total %u", b ? b->counts.total : 0);
    uint64_t id = b ? b->id : 0;
    fanout_batch_info_free(b);
    if (id != 0) {
        b = wait_batch(c, id);
        CHECK(b != NULL && b->counts.completed == N, "chunked batch completed");
        fanout_batch_info_free(b);
        fanout_results *r = NULL;
        const fanout_task_result *res;
        int n = 0;
        CHECK_ST(c, fanout_results_open(c, id, 0, 0, &r), FANOUT_OK);
        while ((st = fanout_results_next(r, &res)) == FANOUT_OK)
            n += res->result_len == 1000;
        CHECK(st == FANOUT_DONE && n == N, "chunked results %d", n);
        fanout_results_free(r);
    }
    /* A duplicate custom_id in a later chunk: the whole batch is refused. */
    tasks[N - 1].custom_id = "c-0";
    CHECK_ST(c, fanout_enqueue_batch(c, "c-chunked", "echo", tasks, N, NULL, NULL), FANOUT_INVALID_ARGUMENT);
    free(tasks);
    free(ids);
}

static void test_cancel_retry(fanout_client *c)
{
    fanout_task_spec slow[3] = { spec("s1", "{\"delay_ms\": 20000}"), spec("s2", "{\"delay_ms\": 20000}"),
                                 spec("s3", "{\"delay_ms\": 20000}") };
    fanout_batch_info *b = NULL;
    CHECK_ST(c, fanout_enqueue_batch(c, "c-cancel", "echo", slow, 3, NULL, &b), FANOUT_OK);
    uint64_t id = b ? b->id : 0;
    fanout_batch_info_free(b);
    b = NULL;
    CHECK_ST(c, fanout_cancel_batch(c, id, &b), FANOUT_OK);
    CHECK(b != NULL && b->status == FANOUT_BATCH_CANCELLED, "batch cancelled: %d", b ? (int)b->status : -1);
    fanout_batch_info_free(b);
    CHECK_ST(c, fanout_cancel_batch(c, id, NULL), FANOUT_OK); /* idempotent */
    CHECK_ST(c, fanout_cancel_batch(c, 987654321, NULL), FANOUT_NOT_FOUND);

    fanout_task_spec t = spec("slow", "{\"delay_ms\": 20000}");
    t.agent = "echo";
    fanout_task_info *task = NULL;
    CHECK_ST(c, fanout_enqueue_task(c, "c-cancel", &t, &task), FANOUT_OK);
    uint64_t tid = task ? task->id : 0;
    fanout_task_info_free(task);
    task = NULL;
    CHECK_ST(c, fanout_cancel_task(c, tid, &task), FANOUT_OK);
    CHECK(task != NULL && task->status == FANOUT_TASK_CANCELLED, "task cancelled: %d",
          task ? (int)task->status : -1);
    fanout_task_info_free(task);
    CHECK_ST(c, fanout_cancel_task(c, 987654321, NULL), FANOUT_NOT_FOUND);

    /* RetryFailed: two failing tasks, one fine. */
    fanout_task_spec mixed[3] = { spec("f1", "{\"fail\": \"boom\"}"), spec("f2", "{\"fail\": \"boom\"}"),
                                  spec("ok", "{}") };
    mixed[0].max_attempts = 1;
    mixed[1].max_attempts = 1;
    b = NULL;
    CHECK_ST(c, fanout_enqueue_batch(c, "c-retry", "echo", mixed, 3, NULL, &b), FANOUT_OK);
    id = b ? b->id : 0;
    fanout_batch_info_free(b);
    b = wait_batch(c, id);
    CHECK(b != NULL && b->counts.failed == 2 && b->counts.completed == 1, "2 failed, 1 completed");
    fanout_batch_info_free(b);
    fanout_results *r = NULL;
    const fanout_task_result *res;
    CHECK_ST(c, fanout_results_open(c, id, 0, 0, &r), FANOUT_OK);
    int errors = 0;
    fanout_status st;
    while ((st = fanout_results_next(r, &res)) == FANOUT_OK)
        errors += res->status == FANOUT_TASK_FAILED && res->error.has_error && strstr(res->error.message, "boom");
    CHECK(st == FANOUT_DONE && errors == 2, "failed results carry the error: %d", errors);
    fanout_results_free(r);
    uint32_t retried = 99;
    b = NULL;
    CHECK_ST(c, fanout_retry_failed(c, id, 0, 0, &retried, &b), FANOUT_OK);
    CHECK(retried == 2, "retried %u", retried);
    CHECK(b != NULL && b->status == FANOUT_BATCH_PROCESSING, "back to processing");
    fanout_batch_info_free(b);
    CHECK_ST(c, fanout_retry_failed(c, 987654321, 1, 1, NULL, NULL), FANOUT_NOT_FOUND);

    /* Not finished yet: FAILED_PRECONDITION. */
    fanout_task_spec one = spec("w", "{\"delay_ms\": 20000}");
    b = NULL;
    CHECK_ST(c, fanout_enqueue_batch(c, "c-retry", "echo", &one, 1, NULL, &b), FANOUT_OK);
    id = b ? b->id : 0;
    fanout_batch_info_free(b);
    CHECK_ST(c, fanout_retry_failed(c, id, 0, 0, NULL, NULL), FANOUT_FAILED_PRECONDITION);
    CHECK_ST(c, fanout_cancel_batch(c, id, NULL), FANOUT_OK);
}

static void test_errors(fanout_client *c)
{
    fanout_task_spec t = spec("e", "{}");
    /* Empty owner: the daemon's INVALID_ARGUMENT; NULL owner: local. */
    CHECK_ST(c, fanout_enqueue_batch(c, "", "echo", &t, 1, NULL, NULL), FANOUT_INVALID_ARGUMENT);
    CHECK(fanout_client_last_message(c)[0] != '\0', "message for empty owner");
    CHECK_ST(c, fanout_enqueue_batch(c, NULL, "echo", &t, 1, NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(c, fanout_enqueue_batch(c, "o", "echo", NULL, 1, NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(c, fanout_enqueue_batch(c, "o", "echo", NULL, 0, NULL, NULL), FANOUT_INVALID_ARGUMENT);
    fanout_task_spec noid = spec(NULL, "{}");
    CHECK_ST(c, fanout_enqueue_batch(c, "o", "echo", &noid, 1, NULL, NULL), FANOUT_BAD_ARGUMENT);
    CHECK_ST(c, fanout_get_batch(c, 987654321, NULL), FANOUT_NOT_FOUND);
    CHECK(strstr(fanout_client_last_message(c), "987654321") != NULL, "message names the id: %s",
          fanout_client_last_message(c));
    /* Invalid UTF-8 is refused locally; the connection is still fine. */
    CHECK_ST(c, fanout_enqueue_batch(c, "bad\xff", "echo", &t, 1, NULL, NULL), FANOUT_BAD_ARGUMENT);
    fanout_task_spec badid = spec("\xc0\x80", "{}");
    CHECK_ST(c, fanout_enqueue_batch(c, "o", "echo", &badid, 1, NULL, NULL), FANOUT_BAD_ARGUMENT);

    /* An unknown agent named with 10,000 bytes: the message comes back whole. */
    size_t len = 10000;
    char *agent = malloc(len + 1);
    if (agent != NULL) {
        for (size_t i = 0; i < len; i++)
            agent[i] = (char)('a' + i % 26);
        agent[len] = '\0';
        CHECK_ST(c, fanout_enqueue_batch(c, "c-err", agent, &t, 1, NULL, NULL), FANOUT_INVALID_ARGUMENT);
        const char *m = fanout_client_last_message(c);
        int all = 1;
        for (int i = 0; i < EXTRA_AGENTS; i++) {
            char name[128];
            agent_name(name, sizeof name, i);
            all &= strstr(m, name) != NULL;
        }
        CHECK(strlen(m) > len && all, "whole message (%zu bytes) naming all %d agents: %d", strlen(m),
              EXTRA_AGENTS, all);
        free(agent);
    }

    /* Payload above max_payload_bytes but within a frame: the daemon says RESOURCE_EXHAUSTED. */
    size_t big = PAYLOAD_LIMIT + 1000;
    char *p = malloc(big);
    if (p != NULL) {
        memset(p, 'x', big);
        fanout_task_spec bt = { .custom_id = "big", .payload = p, .payload_len = big };
        CHECK_ST(c, fanout_enqueue_batch(c, "c-err", "echo", &bt, 1, NULL, NULL), FANOUT_RESOURCE_EXHAUSTED);
        free(p);
    }
    /* Payload above the frame limit: refused locally, nothing sent. */
    big = FRAME_LIMIT + 10;
    p = malloc(big);
    if (p != NULL) {
        memset(p, 'x', big);
        fanout_task_spec bt = { .custom_id = "huge", .payload = p, .payload_len = big, .agent = "echo" };
        CHECK_ST(c, fanout_enqueue_batch(c, "c-err", "echo", &bt, 1, NULL, NULL), FANOUT_BAD_ARGUMENT);
        CHECK(strstr(fanout_client_last_message(c), "max_frame_bytes") != NULL, "says why: %s",
              fanout_client_last_message(c));
        CHECK_ST(c, fanout_enqueue_task(c, "c-err", &bt, NULL), FANOUT_BAD_ARGUMENT);
        free(p);
    }
    fanout_server_info *info = NULL;
    CHECK_ST(c, fanout_get_server_info(c, &info), FANOUT_OK);
    fanout_server_info_free(info);
}

/* A following subscription whose frames arrive while unary calls run. */
static void test_interleaved(fanout_client *c)
{
    fanout_server_info *info = NULL;
    CHECK_ST(c, fanout_get_server_info(c, &info), FANOUT_OK);
    uint64_t since = info ? info->last_sequence : 0;
    fanout_server_info_free(info);
    fanout_subscription *s = NULL;
    fanout_subscribe_options so = { .owner_id = "c-live", .since = since, .follow = 1 };
    CHECK_ST(c, fanout_subscribe(c, &so, &s), FANOUT_OK);
    const fanout_event *ev = NULL;
    CHECK_ST(c, fanout_subscription_next(s, 100, &ev), FANOUT_TIMEOUT);
    fanout_task_spec t[2] = { spec("l1", "{}"), spec("l2", "{}") };
    fanout_batch_info *b = NULL;
    CHECK_ST(c, fanout_enqueue_batch(c, "c-live", "echo", t, 2, NULL, &b), FANOUT_OK);
    uint64_t id = b ? b->id : 0;
    fanout_batch_info_free(b);
    b = wait_batch(c, id); /* events are queued meanwhile */
    fanout_batch_info_free(b);
    int completed = 0;
    fanout_status st;
    while (!completed && (st = fanout_subscription_next(s, 5000, &ev)) == FANOUT_OK) {
        CHECK(ev->sequence > since && ev->batch_id == id, "live event");
        completed = ev->type == FANOUT_EVENT_BATCH_COMPLETED;
    }
    CHECK(completed, "completed event received");
    CHECK_ST(c, fanout_subscription_next(s, 50, &ev), FANOUT_TIMEOUT);
    CHECK(fanout_subscription_last_sequence(s) > since, "last sequence moved");
    fanout_subscription_free(s);

    /* poll() on the descriptor sees a frame waiting. */
    s = NULL;
    fanout_subscribe_options all = { .since = 0, .follow = 0 };
    CHECK_ST(c, fanout_subscribe(c, &all, &s), FANOUT_OK);
    struct pollfd pfd = { .fd = fanout_client_fd(c), .events = POLLIN };
    CHECK(poll(&pfd, 1, 5000) == 1, "fd readable");
    fanout_subscription_free(s);
    CHECK_ST(c, fanout_get_batch(c, id, NULL), FANOUT_OK);
}

/* Waits for a worker message of `kind`, skipping ACKs with OK (counted). */
static const fanout_worker_message *next_kind(fanout_client *wc, fanout_worker *w, fanout_worker_message_kind kind,
                                              int *acks)
{
    for (int i = 0; i < 20; i++) {
        const fanout_worker_message *m = NULL;
        fanout_status st = fanout_worker_next(w, 10000, &m);
        if (st != FANOUT_OK) {
            CHECK(0, "worker next: %s (%s), waiting for kind %d", fanout_status_string(st),
                  fanout_client_last_message(wc), kind);
            return NULL;
        }
        if (m->kind == kind)
            return m;
        if (m->kind == FANOUT_WORKER_ACK && m->status == FANOUT_OK && acks != NULL) {
            (*acks)++;
            continue;
        }
        CHECK(0, "unexpected worker message kind %d (status %s: %s) waiting for %d", m->kind,
              fanout_status_string(m->status), m->status_message ? m->status_message : "", kind);
        return NULL;
    }
    return NULL;
}

static void test_worker(fanout_client *app)
{
    fanout_client *wc = connect_client();
    if (wc == NULL)
        return;
    fanout_worker *w = NULL, *w2 = NULL;
    fanout_agent_registration builtin = { .name = "echo", .concurrency = 1 };
    CHECK_ST(wc, fanout_worker_open(wc, "bad", &builtin, 1, &w2), FANOUT_FAILED_PRECONDITION);
    CHECK(w2 == NULL, "no worker on refusal");
    CHECK_ST(wc, fanout_worker_open(wc, "bad", NULL, 0, &w2), FANOUT_INVALID_ARGUMENT);
    fanout_agent_registration reg = { .name = "c-worker", .concurrency = 2 };
    CHECK_ST(wc, fanout_worker_open(wc, "c-test-worker", &reg, 1, &w), FANOUT_OK);
    if (w == NULL) {
        fanout_client_free(wc);
        return;
    }
    fanout_server_info *info = NULL;
    CHECK_ST(app, fanout_get_server_info(app, &info), FANOUT_OK);
    CHECK(info != NULL && info->workers >= 1, "daemon counts the worker");
    int listed = 0;
    for (size_t i = 0; info != NULL && i < info->n_worker_list; i++) {
        const fanout_connected_worker *cw = &info->worker_list[i];
        if (strcmp(cw->name, "c-test-worker") == 0 && cw->n_agents == 1 &&
            strcmp(cw->agents[0].agent, "c-worker") == 0 && cw->agents[0].slots == 2 && cw->uid == (uint32_t)getuid())
            listed = 1;
    }
    CHECK(listed, "worker_list names the worker and its slots");
    fanout_server_info_free(info);

    /* Two tasks: one result, one failure. */
    fanout_task_spec t[2] = { spec("w-ok", "{\"n\":1}"), spec("w-fail", "{\"n\":2}") };
    fanout_batch_info *b = NULL;
    CHECK_ST(app, fanout_enqueue_batch(app, "c-worker", "c-worker", t, 2, NULL, &b), FANOUT_OK);
    uint64_t id = b ? b->id : 0;
    fanout_batch_info_free(b);
    int acks = 0;
    for (int i = 0; i < 2; i++) {
        const fanout_worker_message *m = next_kind(wc, w, FANOUT_WORKER_ASSIGNMENT, &acks);
        if (m == NULL)
            break;
        CHECK(m->task != NULL && m->task->batch_id == id && m->lease_ms > 0 && !m->resumed, "assignment");
        CHECK(m->task->payload_len == 7 && memcmp(m->task->payload, "{\"n\":", 5) == 0, "assignment payload");
        uint64_t tid = m->task_id;
        int ok = strcmp(m->task->custom_id, "w-ok") == 0;
        CHECK_ST(wc, fanout_worker_heartbeat(w, &tid, 1), FANOUT_OK);
        CHECK_ST(wc, fanout_worker_turn(w, tid, 1), FANOUT_OK);
        fanout_usage u = { 1, 2, 3 };
        if (ok)
            CHECK_ST(wc, fanout_worker_result(w, tid, "done", 4, &u), FANOUT_OK);
        else
            CHECK_ST(wc, fanout_worker_failure(w, tid, "nope", "bad_input", 0, 0), FANOUT_OK);
    }
    while (acks < 2) {
        const fanout_worker_message *m = NULL;
        fanout_status st = fanout_worker_next(w, 10000, &m);
        CHECK_ST(wc, st, FANOUT_OK);
        if (st != FANOUT_OK)
            break;
        CHECK(m->kind == FANOUT_WORKER_ACK && m->status == FANOUT_OK, "ack: kind %d %s", m->kind,
              fanout_status_string(m->status));
        acks++;
    }
    b = wait_batch(app, id);
    CHECK(b != NULL && b->counts.completed == 1 && b->counts.failed == 1, "worker batch: 1 completed, 1 failed");
    fanout_batch_info_free(b);
    fanout_results *r = NULL;
    const fanout_task_result *res;
    int seen = 0;
    fanout_status st;
    CHECK_ST(app, fanout_results_open(app, id, 0, 0, &r), FANOUT_OK);
    while ((st = fanout_results_next(r, &res)) == FANOUT_OK) {
        if (strcmp(res->custom_id, "w-ok") == 0)
            seen += res->result_len == 4 && memcmp(res->result, "done", 4) == 0;
        else
            seen += res->error.has_error && strcmp(res->error.message, "nope") == 0 &&
                    strcmp(res->error.code, "bad_input") == 0;
    }
    CHECK(st == FANOUT_DONE && seen == 2, "worker results: %d", seen);
    fanout_results_free(r);

    /* A parent spawning two echo children and waiting for them. */
    fanout_task_spec parent = spec("parent", "{}");
    parent.agent = "c-worker";
    fanout_task_info *pt = NULL;
    CHECK_ST(app, fanout_enqueue_task(app, "c-worker", &parent, &pt), FANOUT_OK);
    uint64_t pid = pt ? pt->id : 0;
    fanout_task_info_free(pt);
    const fanout_worker_message *m = next_kind(wc, w, FANOUT_WORKER_ASSIGNMENT, NULL);
    CHECK(m != NULL && m->task_id == pid, "parent assigned");
    fanout_task_spec kids[2] = { spec("k1", "{\"k\":1}"), spec("k2", "{\"k\":2}") };
    CHECK_ST(wc, fanout_worker_spawn(w, pid, "echo", kids, 2, NULL), FANOUT_OK);
    m = next_kind(wc, w, FANOUT_WORKER_SPAWNED, NULL);
    uint64_t child_batch = m ? m->child_batch_id : 0;
    CHECK(m != NULL && m->status == FANOUT_OK && child_batch != 0, "spawned");
    CHECK_ST(wc, fanout_worker_wait_children(w, pid, 0), FANOUT_OK);
    m = next_kind(wc, w, FANOUT_WORKER_ASSIGNMENT, NULL);
    CHECK(m != NULL && m->resumed && m->task_id == pid, "resumed");
    size_t children = 0;
    int last = 0;
    while (!last && (m = next_kind(wc, w, FANOUT_WORKER_CHILDREN_DONE, NULL)) != NULL) {
        CHECK(m->task_id == pid, "children of the parent");
        if (m->n_results > 0)
            CHECK(m->child_batch_id == child_batch, "child batch id");
        for (size_t i = 0; i < m->n_results; i++)
            children += m->results[i].status == FANOUT_TASK_COMPLETED && m->results[i].result_len == 7;
        last = m->last;
    }
    CHECK(last && children == 2, "children done: %zu", children);
    CHECK_ST(wc, fanout_worker_result(w, pid, "parent", 6, NULL), FANOUT_OK);
    m = next_kind(wc, w, FANOUT_WORKER_ACK, NULL);
    CHECK(m != NULL && m->status == FANOUT_OK && m->task_id == pid, "parent result acked");
    pt = NULL;
    for (int i = 0; i < 100; i++) {
        fanout_task_info_free(pt);
        pt = NULL;
        if (fanout_get_task(app, pid, 0, &pt) != FANOUT_OK || pt->status >= FANOUT_TASK_COMPLETED)
            break;
        sleep_ms(50);
    }
    CHECK(pt != NULL && pt->status == FANOUT_TASK_COMPLETED && pt->result_len == 6, "parent completed");
    fanout_task_info_free(pt);

    /* Cancelled while the worker runs it: a CANCEL message arrives. */
    fanout_task_spec slow = spec("to-cancel", "{}");
    slow.agent = "c-worker";
    pt = NULL;
    CHECK_ST(app, fanout_enqueue_task(app, "c-worker", &slow, &pt), FANOUT_OK);
    uint64_t cid = pt ? pt->id : 0;
    fanout_task_info_free(pt);
    m = next_kind(wc, w, FANOUT_WORKER_ASSIGNMENT, NULL);
    CHECK(m != NULL && m->task_id == cid, "to-cancel assigned");
    pid_t canceller = fork();
    if (canceller == 0) { /* CancelTask waits for the worker's answer: ask from elsewhere */
        fanout_client *cc = NULL;
        int rc = 1;
        if (fanout_client_new(&cc) == FANOUT_OK && fanout_client_connect(cc, sock_path, "canceller") == FANOUT_OK)
            rc = fanout_cancel_task(cc, cid, NULL) == FANOUT_OK ? 0 : 1;
        fanout_client_free(cc);
        _exit(rc);
    }
    m = next_kind(wc, w, FANOUT_WORKER_CANCEL, NULL);
    CHECK(m != NULL && m->task_id == cid, "cancel message");
    CHECK_ST(wc, fanout_worker_failure(w, cid, "stopped", "cancelled", 0, 0), FANOUT_OK);
    m = next_kind(wc, w, FANOUT_WORKER_ACK, NULL);
    CHECK(m != NULL && m->task_id == cid, "cancel acknowledged");
    int status = 0;
    while (canceller > 0 && waitpid(canceller, &status, 0) < 0 && errno == EINTR) {
    }
    CHECK(canceller > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "CancelTask from another client");

    CHECK_ST(wc, fanout_worker_drain(w), FANOUT_OK);
    CHECK_ST(wc, fanout_worker_next(w, 100, &m), FANOUT_TIMEOUT);
    CHECK_ST(NULL, fanout_worker_next(NULL, 0, &m), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_worker_drain(NULL), FANOUT_BAD_ARGUMENT);
    fanout_worker_free(w);
    fanout_worker_free(NULL);
    info = NULL;
    CHECK_ST(wc, fanout_get_server_info(wc, &info), FANOUT_OK);
    fanout_server_info_free(info);
    CHECK_ST(wc, fanout_get_server_info(wc, NULL), FANOUT_BAD_ARGUMENT);
    fanout_client_free(wc);
}

/* A subscription not read while its client makes other calls: cut off in
 * the client after subscriber_buffer events; resuming loses nothing. */
static void test_lag_local(fanout_client *c)
{
    fanout_limits lim;
    CHECK_ST(c, fanout_client_limits(c, &lim), FANOUT_OK);
    CHECK(lim.subscriber_buffer == SUBSCRIBER_BUFFER, "subscriber_buffer %u", lim.subscriber_buffer);
    fanout_server_info *info = NULL;
    CHECK_ST(c, fanout_get_server_info(c, &info), FANOUT_OK);
    uint64_t since = info ? info->last_sequence : 0;
    fanout_server_info_free(info);
    fanout_subscription *s = NULL;
    fanout_subscribe_options so = { .owner_id = "c-lag", .since = since, .follow = 1 };
    CHECK_ST(c, fanout_subscribe(c, &so, &s), FANOUT_OK);
    enum { N = 200 };
    fanout_task_spec *tasks = calloc(N, sizeof *tasks);
    char (*ids)[24] = calloc(N, sizeof *ids);
    fanout_batch_info *b = NULL;
    if (tasks != NULL && ids != NULL) {
        for (int i = 0; i < N; i++) {
            snprintf(ids[i], sizeof ids[i], "lag-%d", i);
            tasks[i] = spec(ids[i], "{}");
        }
        CHECK_ST(c, fanout_enqueue_batch(c, "c-lag", "echo", tasks, N, NULL, &b), FANOUT_OK);
    }
    free(tasks);
    free(ids);
    uint64_t id = b ? b->id : 0;
    fanout_batch_info_free(b);
    b = wait_batch(c, id); /* the subscription's events pile up meanwhile */
    fanout_batch_info_free(b);
    const fanout_event *ev = NULL;
    fanout_status st;
    int n = 0;
    uint64_t seq = since;
    while ((st = fanout_subscription_next(s, 5000, &ev)) == FANOUT_OK) {
        n++;
        seq = ev->sequence;
    }
    CHECK_ST(c, st, FANOUT_RESOURCE_EXHAUSTED);
    /* Cut by this client's buffer (at exactly SUBSCRIBER_BUFFER events) or, when the daemon's
     * buffer of the same size filled first while this process was slow to read, by the daemon
     * (fewer): either way lagged, and resumable without a gap (below). */
    CHECK(fanout_subscription_lagged(s) && n > 0 && n <= SUBSCRIBER_BUFFER, "lagged after %d events", n);
    CHECK(fanout_subscription_last_sequence(s) == seq, "resume point = last delivered");
    fanout_subscription_free(s);

    /* Resume: the replay starts right after, and reaches the end of the batch. */
    s = NULL;
    fanout_subscribe_options again = { .owner_id = "c-lag", .since = seq, .follow = 0 };
    CHECK_ST(c, fanout_subscribe(c, &again, &s), FANOUT_OK);
    int first = 1, gapless = 1, completed = 0;
    while ((st = fanout_subscription_next(s, 5000, &ev)) == FANOUT_OK) {
        if (first)
            gapless = ev->sequence > seq;
        first = 0;
        completed |= ev->type == FANOUT_EVENT_BATCH_COMPLETED && ev->batch_id == id;
    }
    CHECK(st == FANOUT_DONE && gapless && completed, "resumed replay (%s)", fanout_status_string(st));
    fanout_subscription_free(s);
}

/* A subscriber that does not read at all: the daemon drops it (lagged). */
static void test_lag_daemon(fanout_client *c)
{
    fanout_client *sub = connect_client();
    if (sub == NULL)
        return;
    fanout_server_info *info = NULL;
    CHECK_ST(c, fanout_get_server_info(c, &info), FANOUT_OK);
    uint64_t since = info ? info->last_sequence : 0;
    fanout_server_info_free(info);
    fanout_subscription *s = NULL;
    fanout_subscribe_options so = { .owner_id = "c-lag2", .since = since, .follow = 1 };
    CHECK_ST(sub, fanout_subscribe(sub, &so, &s), FANOUT_OK);
    const fanout_event *ev = NULL;
    CHECK_ST(sub, fanout_subscription_next(s, 50, &ev), FANOUT_TIMEOUT);
    /* How many events the socket buffers hold before the daemon must drop the subscriber
     * depends on the machine and on how events group into commits: several batches make
     * sure they overflow. */
    enum { N = 5000, ROUNDS = 4 };
    fanout_task_spec *tasks = calloc(N, sizeof *tasks);
    char (*ids)[40] = calloc(N, sizeof *ids);
    uint64_t id = 0;
    for (int round = 0; round < ROUNDS && tasks != NULL && ids != NULL; round++) {
        fanout_batch_info *b = NULL;
        for (int i = 0; i < N; i++) {
            snprintf(ids[i], sizeof ids[i], "lag2-%d-%d", round, i);
            tasks[i] = spec(ids[i], "{\"padding\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}");
        }
        CHECK_ST(c, fanout_enqueue_batch(c, "c-lag2", "echo", tasks, N, NULL, &b), FANOUT_OK);
        id = b ? b->id : 0;
        fanout_batch_info_free(b);
        b = wait_batch(c, id);
        fanout_batch_info_free(b);
    }
    free(tasks);
    free(ids);
    fanout_status st;
    int n = 0;
    uint64_t seq = since;
    while ((st = fanout_subscription_next(s, 5000, &ev)) == FANOUT_OK) {
        n++;
        seq = ev->sequence;
    }
    CHECK(st == FANOUT_RESOURCE_EXHAUSTED && fanout_subscription_lagged(s), "daemon dropped the subscriber: %s after %d (%s)",
          fanout_status_string(st), n, fanout_client_last_message(sub));
    CHECK(fanout_subscription_last_sequence(s) == seq && n > 0, "last_sequence %llu, last seen %llu",
          (unsigned long long)fanout_subscription_last_sequence(s), (unsigned long long)seq);
    fanout_subscription_free(s);
    CHECK_ST(sub, fanout_get_batch(sub, id, NULL), FANOUT_OK); /* the connection goes on */
    fanout_client_free(sub);
}

static void test_client_freed_first(void)
{
    fanout_client *c = connect_client();
    if (c == NULL)
        return;
    fanout_subscription *s = NULL;
    fanout_subscribe_options so = { .follow = 1 };
    CHECK_ST(c, fanout_subscribe(c, &so, &s), FANOUT_OK);
    fanout_results *r = NULL;
    CHECK_ST(c, fanout_results_open(c, 1, 0, 0, &r), FANOUT_OK);
    fanout_client_free(c);
    const fanout_event *ev;
    const fanout_task_result *res;
    CHECK_ST(NULL, fanout_subscription_next(s, 10, &ev), FANOUT_BAD_ARGUMENT);
    CHECK_ST(NULL, fanout_results_next(r, &res), FANOUT_BAD_ARGUMENT);
    fanout_subscription_free(s);
    fanout_results_free(r);
}

/* The daemon stops (sig) while a subscription waits in next(). */
static void test_daemon_stops(int sig)
{
    fanout_client *c = connect_client();
    if (c == NULL)
        return;
    fanout_subscription *s = NULL;
    fanout_subscribe_options so = { .owner_id = "c-stop", .follow = 1, .since = 0 };
    CHECK_ST(c, fanout_subscribe(c, &so, &s), FANOUT_OK);
    const fanout_event *ev = NULL;
    CHECK_ST(c, fanout_subscription_next(s, 100, &ev), FANOUT_TIMEOUT);
    pid_t helper = kill_later(sig, 300);
    fanout_status st = fanout_subscription_next(s, 15000, &ev);
    CHECK(st == FANOUT_UNAVAILABLE || st == FANOUT_IO_ERROR, "after %s: %s (%s)", sig == SIGTERM ? "SIGTERM" : "SIGKILL",
          fanout_status_string(st), fanout_client_last_message(c));
    if (sig == SIGKILL)
        CHECK_ST(c, st, FANOUT_IO_ERROR);
    CHECK(ev == NULL, "no event");
    CHECK(fanout_subscription_next(s, 10, &ev) == st, "stays ended");
    fanout_subscription_free(s);
    fanout_server_info *info = NULL;
    fanout_status st2 = fanout_get_server_info(c, &info);
    CHECK(st2 == FANOUT_IO_ERROR || st2 == FANOUT_UNAVAILABLE, "call after stop: %s", fanout_status_string(st2));
    fanout_server_info_free(info);
    reap(helper);
    fanout_client_free(c);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    fanoutd = getenv("FANOUTD");
    if (fanoutd == NULL || fanoutd[0] == '\0')
        fanoutd = "../../.build/debug/fanoutd";
    snprintf(dir, sizeof dir, "/tmp/fanout-ctest-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        printf("0 passed, 1 failed\n");
        return 1;
    }
    snprintf(sock_path, sizeof sock_path, "%s/d.sock", dir);
    snprintf(db_path, sizeof db_path, "%s/fanout.db", dir);
    snprintf(log_path, sizeof log_path, "%s/fanoutd.log", dir);
    snprintf(config_path, sizeof config_path, "%s/config.json", dir);
    if (write_config() != 0)
        CHECK(0, "cannot write %s", config_path);

    test_status_codes();
    test_default_socket_path();
    test_null_handles();
    test_not_running();
    test_fake_server();
    test_socket_owner();
    printf("offline tests done\n");

    if (access(fanoutd, X_OK) != 0 || start_daemon() != 0) {
        CHECK(0, "cannot start %s (see %s)", fanoutd, log_path);
    } else {
        fanout_client *c = connect_client();
        if (c != NULL) {
            test_handshake_and_info(c);
            test_task(c);
            test_batch_results_subscribe(c);
            test_list(c);
            test_chunked(c);
            test_cancel_retry(c);
            test_errors(c);
            test_interleaved(c);
            test_worker(c);
            test_lag_local(c);
            test_lag_daemon(c);
            fanout_client_free(c);
        }
        test_client_freed_first();
        printf("daemon tests done\n");
        test_daemon_stops(SIGTERM);
        if (start_daemon() == 0) {
            test_daemon_stops(SIGKILL);
            printf("stop tests done\n");
        } else {
            CHECK(0, "cannot restart %s", fanoutd);
        }
    }
    stop_daemon(SIGTERM);
    if (failed == 0) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
    } else {
        fprintf(stderr, "daemon log and database kept in %s\n", dir);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
