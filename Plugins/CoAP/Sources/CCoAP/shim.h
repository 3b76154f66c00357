// libcoap 4.3 (Debian's libcoap3-dev, the OpenSSL build: DTLS with PSK and PKI), and the eventfd that
// wakes a CoAP loop thread beside libcoap's epoll descriptor.
#include <coap3/coap.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <sys/epoll.h>

/* Takes what libcoap's epoll descriptor has ready, in up to `rounds` rounds, with coap_io_do_epoll:
 * no timer re-arming and no walk of every session per datagram, as coap_io_process would do (the
 * caller runs coap_io_prepare_epoll once per turn of its loop). Returns the events handled. */
static inline int iotc_coap_drain_epoll(coap_context_t *ctx, int epfd, int rounds) {
  struct epoll_event events[32];
  int handled = 0;
  for (int r = 0; r < rounds; r++) {
    int n = epoll_wait(epfd, events, 32, 0);
    if (n <= 0) break;
    coap_io_do_epoll(ctx, events, (size_t)n);
    handled += n;
  }
  return handled;
}
