`resetall
`timescale 1ns / 1ps
`default_nettype none

/* An empty toplevel: for testbenches whose devices are all Python models (cocotb still needs a simulator) */
module empty_top;
endmodule

`resetall
