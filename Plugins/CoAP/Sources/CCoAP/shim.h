// libcoap 4.3 (Debian's libcoap3-dev, the OpenSSL build: DTLS with PSK and PKI), and the eventfd that
// wakes a CoAP loop thread beside libcoap's epoll descriptor.
#include <coap3/coap.h>
#include <sys/eventfd.h>
#include <poll.h>
