#ifndef FANOUT_CPROTOBUFC_SHIM_H
#define FANOUT_CPROTOBUFC_SHIM_H
#include <protobuf-c/protobuf-c.h>
#endif
