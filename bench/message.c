/* See message.h. */
#include "message.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

const char message_header[] =
    "Received: from mail.example.org (mail.example.org [127.0.0.1])\r\n"
    "\tby mx.example.net with ESMTP id 0ABC123; Mon, 2 Mar 2026 10:00:00 +0000\r\n"
    "From: Alice Example <alice@example.org>\r\n"
    "To: Bob Example <bob@example.net>\r\n"
    "Subject: benchmark message\r\n"
    "Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n"
    "Message-ID: <bench-0ABC123@example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n";
const size_t message_header_len = sizeof message_header - 1;

/* Body lines: 78 characters and CRLF. */
#define LINE_LEN 80
static const char body_line[LINE_LEN + 1] =
    "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n";
/* A run of whole lines longer than any chunk, so that any line offset starts a long run. */
#define PATTERN_LINES 830
static unsigned char pattern[LINE_LEN * PATTERN_LINES];
/* The same lines with LF ends, as a BMI caller holds a body. */
#define LF_LINE_LEN (LINE_LEN - 1)
static unsigned char pattern_lf[LF_LINE_LEN * PATTERN_LINES];

void message_setup(void)
{
    for (int i = 0; i < PATTERN_LINES; i++) {
        memcpy(pattern + (size_t)i * LINE_LEN, body_line, LINE_LEN);
        memcpy(pattern_lf + (size_t)i * LF_LINE_LEN, body_line, LF_LINE_LEN - 1);
        pattern_lf[(size_t)i * LF_LINE_LEN + LF_LINE_LEN - 1] = '\n';
    }
}

/* The LF form of m->data, and its header fields' ends. */
static void make_lf(struct msgdef *m)
{
    m->lf = xmalloc(m->len + 1);
    m->field_end = xmalloc(sizeof *m->field_end * (m->len / 2 + 1));
    m->lf_len = m->nfields = m->lf_body = 0;
    int in_body = 0;
    for (size_t i = 0; i < m->len; i++) {
        if (m->data[i] == '\r' && i + 1 < m->len && m->data[i + 1] == '\n')
            continue; /* CRLF becomes LF */
        char c = (char)m->data[i];
        m->lf[m->lf_len++] = c;
        if (in_body || c != '\n')
            continue;
        /* A line of the header section ends here: the blank line, or a field's last line
         * (unless a continuation line follows). */
        size_t next = i + 1;
        if (m->lf_len == 1 || m->lf[m->lf_len - 2] == '\n') {
            in_body = 1;
            m->lf_body = m->lf_len;
        } else if (next >= m->len || (m->data[next] != ' ' && m->data[next] != '\t')) {
            m->field_end[m->nfields++] = m->lf_len;
        }
    }
}

void make_message(struct msgdef *m, const char *name, size_t size)
{
    size_t hl = message_header_len;
    if (size < hl + 2)
        size = hl + 2;
    m->name = name;
    m->len = size;
    m->data = xmalloc(size);
    memcpy(m->data, message_header, hl);
    size_t pos = hl;
    while (pos < size) {
        size_t left = size - pos;
        if (left >= LINE_LEN) {
            memcpy(m->data + pos, body_line, LINE_LEN);
            pos += LINE_LEN;
        } else {
            /* A shorter last line, still ending in CRLF. */
            memset(m->data + pos, 'x', left - 2);
            memcpy(m->data + pos + left - 2, "\r\n", 2);
            pos = size;
        }
    }
    make_lf(m);
}

void free_message(struct msgdef *m)
{
    free(m->data);
    free(m->lf);
    free(m->field_end);
    memset(m, 0, sizeof *m);
}

ptrdiff_t gen_read(void *ctx, uint8_t *buf, size_t len)
{
    struct gen *g = ctx;
    size_t hl = message_header_len;
    size_t done = 0;
    while (done < len && g->pos < g->total) {
        uint64_t left = g->total - g->pos;
        size_t want = len - done;
        if (want > left)
            want = (size_t)left;
        if (g->pos < hl) {
            size_t n = hl - (size_t)g->pos;
            if (n > want)
                n = want;
            memcpy(buf + done, message_header + g->pos, n);
            g->pos += n;
            done += n;
            continue;
        }
        size_t off = (size_t)((g->pos - hl) % LINE_LEN);
        size_t n = sizeof pattern - off;
        if (n > want)
            n = want;
        memcpy(buf + done, pattern + off, n);
        g->pos += n;
        done += n;
    }
    return (ptrdiff_t)done;
}

ptrdiff_t gen_read_lf_body(struct gen *g, uint8_t *buf, size_t len)
{
    size_t done = 0;
    while (done < len && g->pos < g->total) {
        uint64_t left = g->total - g->pos;
        size_t want = len - done;
        if (want > left)
            want = (size_t)left;
        size_t off = (size_t)(g->pos % LF_LINE_LEN);
        size_t n = sizeof pattern_lf - off;
        if (n > want)
            n = want;
        memcpy(buf + done, pattern_lf + off, n);
        g->pos += n;
        done += n;
    }
    return (ptrdiff_t)done;
}

static SpamfilterRecipient the_rcpt = {.address = RECIPIENT};

SpamfilterMessage envelope(void)
{
    SpamfilterMessage m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    m.client_name = CLIENT_NAME;
    m.client_addr = CLIENT_ADDR;
    m.client_port = CLIENT_PORT;
    m.helo = HELO_NAME;
    m.sender = SENDER;
    m.recipients = &the_rcpt;
    m.recipient_count = 1;
    m.mta_hostname = MTA_HOSTNAME;
    m.queue_id = QUEUE_ID;
    return m;
}
