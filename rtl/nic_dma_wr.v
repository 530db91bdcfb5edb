`resetall
`timescale 1ns / 1ps
`default_nettype none

/* DMA write engine: write jobs (frame-store data or immediate data) split into MWr TLPs at MPS and 4 KB */
module nic_dma_wr #
(
    // DWORD address width of the write source RAM (RX frame store)
    parameter SRC_AW = 13
)
(
    input  wire                          clk,
    input  wire                          rst,

    input  wire [1:0]                    cfg_max_payload,
    input  wire                          bus_master,

    /* write jobs, 3 ports (served one job at a time, in acceptance order) */
    input  wire [2:0]                    s_job_valid,
    output reg  [2:0]                    s_job_ready,
    input  wire [3*64-1:0]               s_job_addr,
    input  wire [3*16-1:0]               s_job_len,
    input  wire [2:0]                    s_job_imm_en,
    input  wire [3*128-1:0]              s_job_imm,
    input  wire [3*SRC_AW-1:0]           s_job_src,
    input  wire [3*3-1:0]                s_job_attr,
    output reg  [2:0]                    m_done,

    /* write TLP towards the RQ emitter (launched when valid && ready) */
    output wire                          m_tlp_valid,
    input  wire                          m_tlp_ready,
    output wire [63:0]                   m_tlp_addr,
    output wire [10:0]                   m_tlp_dw,
    output wire [3:0]                    m_tlp_first_be,
    output wire [3:0]                    m_tlp_last_be,
    output wire [2:0]                    m_tlp_attr,
    output wire                          m_tlp_imm_en,
    output wire [127:0]                  m_tlp_imm,
    output wire [SRC_AW-1:0]             m_tlp_src,
    output wire                          m_tlp_last,     // last TLP of the job
    output wire [1:0]                    m_tlp_port,
    /* the emitter finished sending a write TLP (its last/port as launched) */
    input  wire                          s_sent_valid,
    input  wire                          s_sent_last,
    input  wire [1:0]                    s_sent_port,

    output reg                           stat_mem_wr,
    output reg  [12:0]                   stat_wr_bytes
);

function [3:0] be_mask;
    input [1:0] len_lsb;
    begin
        case (len_lsb)
            2'd1: be_mask = 4'b0001;
            2'd2: be_mask = 4'b0011;
            2'd3: be_mask = 4'b0111;
            default: be_mask = 4'b1111;
        endcase
    end
endfunction

function [12:0] min3;
    input [15:0] a;
    input [12:0] b;
    input [12:0] c;
    reg [15:0] m;
    begin
        m = a;
        if ({3'd0, b} < m) m = {3'd0, b};
        if ({3'd0, c} < m) m = {3'd0, c};
        min3 = m[12:0];
    end
endfunction

wire [12:0] mps_bytes = 13'd128 << cfg_max_payload;

reg              wj_active_reg;
reg [1:0]        wj_port_reg;
reg [63:0]       wj_addr_reg;
reg [15:0]       wj_rem_reg;
reg              wj_imm_en_reg;
reg [127:0]      wj_imm_reg;
reg [SRC_AW-1:0] wj_src_reg;
reg [2:0]        wj_attr_reg;
reg [1:0]        rr_reg;

initial begin
    wj_active_reg = 1'b0;
    wj_port_reg = 2'd0;
    wj_addr_reg = 64'd0;
    wj_rem_reg = 16'd0;
    wj_imm_en_reg = 1'b0;
    wj_imm_reg = 128'd0;
    wj_src_reg = {SRC_AW{1'b0}};
    wj_attr_reg = 3'd0;
    rr_reg = 2'd0;
    m_done = 3'd0;
    stat_mem_wr = 1'b0;
    stat_wr_bytes = 13'd0;
end

`ifdef NIC_FAULT_SPLIT_4K
wire [12:0] wr_len = min3(wj_rem_reg, mps_bytes, 13'h1000);   // planted fault: writes cross 4 KB boundaries
`else
wire [12:0] wr_len = min3(wj_rem_reg, mps_bytes, 13'h1000 - {1'b0, wj_addr_reg[11:0]});
`endif
wire [10:0] wr_dw  = wr_len[12:2] + {10'd0, wr_len[1:0] != 2'd0};
wire        wr_last = wj_rem_reg == {3'd0, wr_len};

assign m_tlp_valid    = wj_active_reg && bus_master;
assign m_tlp_addr     = wj_addr_reg;
assign m_tlp_dw       = wr_dw;
assign m_tlp_first_be = (wr_dw == 11'd1) ? be_mask(wr_len[1:0]) : 4'b1111;
assign m_tlp_last_be  = (wr_dw == 11'd1) ? 4'b0000 : be_mask(wr_len[1:0]);
assign m_tlp_attr     = wj_attr_reg;
assign m_tlp_imm_en   = wj_imm_en_reg;
assign m_tlp_imm      = wj_imm_reg;
assign m_tlp_src      = wj_src_reg;
assign m_tlp_last     = wr_last;
assign m_tlp_port     = wj_port_reg;
wire   launch         = m_tlp_valid && m_tlp_ready;

// accept a job when idle (round robin)
reg [1:0] pick;
reg       pick_ok;
reg [2:0] rk;
integer ci;
always @* begin
    pick = 2'd0;
    pick_ok = 1'b0;
    for (ci = 3; ci >= 1; ci = ci - 1) begin
        rk = ({1'b0, rr_reg} + ci[2:0]) % 3'd3;
        if (s_job_valid[rk[1:0]]) begin
            pick = rk[1:0];
            pick_ok = 1'b1;
        end
    end
    if (wj_active_reg) pick_ok = 1'b0;
    s_job_ready = 3'd0;
    if (pick_ok) s_job_ready[pick] = 1'b1;
end
wire [15:0] pick_len = s_job_len[pick*16 +: 16];

always @(posedge clk) begin
    m_done <= 3'd0;
    stat_mem_wr <= 1'b0;
    stat_wr_bytes <= 13'd0;

    if (pick_ok) begin
        wj_active_reg <= pick_len != 16'd0;
        wj_port_reg <= pick;
        wj_addr_reg <= s_job_addr[pick*64 +: 64];
        wj_rem_reg <= pick_len;
        wj_imm_en_reg <= s_job_imm_en[pick];
        wj_imm_reg <= s_job_imm[pick*128 +: 128];
        wj_src_reg <= s_job_src[pick*SRC_AW +: SRC_AW];
        wj_attr_reg <= s_job_attr[pick*3 +: 3];
        rr_reg <= pick;
        if (pick_len == 16'd0) m_done[pick] <= 1'b1;
    end

    if (launch) begin
        wj_addr_reg <= wj_addr_reg + {51'd0, wr_len};
        wj_rem_reg <= wj_rem_reg - {3'd0, wr_len};
        wj_src_reg <= wj_src_reg + {{(SRC_AW-11){1'b0}}, wr_dw};
        wj_imm_reg <= wj_imm_reg >> (wr_dw*32);
        if (wr_last) wj_active_reg <= 1'b0;
        stat_mem_wr <= 1'b1;
        stat_wr_bytes <= wr_len;
    end

    if (s_sent_valid && s_sent_last) m_done[s_sent_port] <= 1'b1;

    if (rst) begin
        wj_active_reg <= 1'b0;
        rr_reg <= 2'd0;
        m_done <= 3'd0;
    end
end

wire unused_ok = &{1'b0, rk[2]};

endmodule

`resetall
