include "../capi/gru.pxd"
