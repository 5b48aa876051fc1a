include "../capi/lstm.pxd"
