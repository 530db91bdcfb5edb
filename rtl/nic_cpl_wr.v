`resetall
`timescale 1ns / 1ps
`default_nettype none

/* Completion-record writer shared by the TX and RX queues: builds a 16-byte record, writes it, reports done */
module nic_cpl_wr #
(
    // record size in bytes and its status codes (rtl/nic_regs.vh CPL_BYTES, CPL_STATUS_*)
    parameter RECORD_BYTES = 16,
    parameter [7:0] STATUS_OK = 8'd0,
    parameter [7:0] STATUS_TRUNC = 8'd1
)
(
    input  wire          clk,
    input  wire          rst,

    /* completion ring bases (queue 0 TX, 1 RX) */
    input  wire [63:0]   tx_cpl_base,
    input  wire [63:0]   rx_cpl_base,

    /* record requests */
    input  wire          tx_valid,
    output wire          tx_ready,
    input  wire [15:0]   tx_index,
    input  wire [15:0]   tx_len,
    input  wire          tx_phase,
    output reg           tx_done,
    input  wire          rx_valid,
    output wire          rx_ready,
    input  wire [15:0]   rx_index,
    input  wire [15:0]   rx_len,
    input  wire          rx_trunc,
    input  wire          rx_phase,
    output reg           rx_done,

    /* write job (immediate data) */
    output reg           wr_valid,
    input  wire          wr_ready,
    output reg  [63:0]   wr_addr,
    output wire [15:0]   wr_len,
    output reg  [127:0]  wr_imm,
    input  wire          wr_done
);

/* completion record (rtl/nic_regs.vh CPL_BYTES): DW0 index | status << 16, DW1 length, DW2 0, DW3 valid << 31 | phase */
function [127:0] cpl_record;
    input [15:0] index;
    input [7:0]  status;
    input [15:0] length;
    input        phase;
    begin
        cpl_record = 128'd0;
        cpl_record[15:0]   = index;
        cpl_record[23:16]  = status;
        cpl_record[47:32]  = length;
        cpl_record[96]     = phase;
        cpl_record[127]    = 1'b1;
    end
endfunction

reg busy_reg;      // a record is being written
reg busy_rx_reg;   // ... for the RX queue
reg rr_reg;        // last served: 0 TX, 1 RX

initial begin
    if (RECORD_BYTES != 16) begin
        $error("Error: the record layout is 16 bytes (instance %m)");
        $finish;
    end
    busy_reg = 1'b0;
    busy_rx_reg = 1'b0;
    rr_reg = 1'b0;
    wr_valid = 1'b0;
    wr_addr = 64'd0;
    wr_imm = 128'd0;
    tx_done = 1'b0;
    rx_done = 1'b0;
end

assign wr_len = RECORD_BYTES[15:0];
wire pick_rx = rx_valid && (!tx_valid || !rr_reg);
assign rx_ready = !busy_reg && pick_rx;
assign tx_ready = !busy_reg && tx_valid && !pick_rx;

always @(posedge clk) begin
    tx_done <= 1'b0;
    rx_done <= 1'b0;
    if (tx_ready) begin
        busy_reg <= 1'b1;
        busy_rx_reg <= 1'b0;
        rr_reg <= 1'b0;
        wr_valid <= 1'b1;
        wr_addr <= tx_cpl_base + {44'd0, tx_index, 4'd0};
        wr_imm <= cpl_record(tx_index, STATUS_OK, tx_len, tx_phase);
    end else if (rx_ready) begin
        busy_reg <= 1'b1;
        busy_rx_reg <= 1'b1;
        rr_reg <= 1'b1;
        wr_valid <= 1'b1;
        wr_addr <= rx_cpl_base + {44'd0, rx_index, 4'd0};
        wr_imm <= cpl_record(rx_index, rx_trunc ? STATUS_TRUNC : STATUS_OK, rx_len, rx_phase);
    end
    if (wr_valid && wr_ready) wr_valid <= 1'b0;
    if (wr_done && busy_reg) begin
        busy_reg <= 1'b0;
        if (busy_rx_reg) rx_done <= 1'b1;
        else tx_done <= 1'b1;
    end
    if (rst) begin
        busy_reg <= 1'b0;
        wr_valid <= 1'b0;
        rr_reg <= 1'b0;
    end
end

endmodule

`resetall
