include "../capi/rnn.pxd"
