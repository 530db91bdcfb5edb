`resetall
`timescale 1ns / 1ps
`default_nettype none

// Registers carry declaration initial values so every simulator (Icarus starts at X) begins in a defined
// state before the first reset; the synchronous reset still clears every control register. Verilator's
// PROCASSINIT flags exactly this pattern, so it is waived for this file.
/* verilator lint_off PROCASSINIT */

/* DMA engine: memory reads and writes to host memory over the UltraScale+ RQ/RC interface */
module nic_dma #
(
    // PCIe user interface data width (64, 128, 256)
    parameter DATA_WIDTH = 64,
    // DWORD lanes per beat
    parameter KEEP_WIDTH = DATA_WIDTH/32,
    // RQ tuser width (UltraScale+, data width < 512)
    parameter RQ_USER_WIDTH = 62,
    // RC tuser width (UltraScale+, data width < 512)
    parameter RC_USER_WIDTH = 75,
    // read tags in the tag table (tags 0..TAG_COUNT-1; 32 without extended tags)
    parameter TAG_COUNT = 32,
    // tag index width
    parameter TAG_WIDTH = $clog2(TAG_COUNT),
    // read clients (each has one job at a time)
    parameter RD_CLIENTS = 2,
    // write clients (each has one job at a time)
    parameter WR_CLIENTS = 3,
    // DWORD address width of the read destination RAM
    parameter RD_RAM_AW = 13,
    // DWORD address width of the write source RAM
    parameter WR_RAM_AW = 12
)
(
    input  wire                          clk,
    input  wire                          rst,

    /* link parameters from the configuration space */
    input  wire [1:0]                    cfg_max_payload,
    input  wire [2:0]                    cfg_max_read_req,
    input  wire [31:0]                   cpl_timeout,

    /* requester request (to the hard IP) */
    output reg  [DATA_WIDTH-1:0]         m_axis_rq_tdata,
    output reg  [KEEP_WIDTH-1:0]         m_axis_rq_tkeep,
    output reg                           m_axis_rq_tlast,
    output wire [RQ_USER_WIDTH-1:0]      m_axis_rq_tuser,
    output wire                          m_axis_rq_tvalid,
    input  wire                          m_axis_rq_tready,

    /* requester completion (from the hard IP) */
    input  wire [DATA_WIDTH-1:0]         s_axis_rc_tdata,
    input  wire [KEEP_WIDTH-1:0]         s_axis_rc_tkeep,
    input  wire                          s_axis_rc_tlast,
    input  wire [RC_USER_WIDTH-1:0]      s_axis_rc_tuser,
    input  wire                          s_axis_rc_tvalid,
    output wire                          s_axis_rc_tready,

    /* read jobs: host memory -> read destination RAM */
    input  wire [RD_CLIENTS-1:0]         rd_req_valid,
    output wire [RD_CLIENTS-1:0]         rd_req_ready,
    input  wire [RD_CLIENTS*64-1:0]      rd_req_addr,
    input  wire [RD_CLIENTS*16-1:0]      rd_req_len,
    input  wire [RD_CLIENTS*RD_RAM_AW-1:0] rd_req_ram,
    output reg  [RD_CLIENTS-1:0]         rd_done,
    output reg  [RD_CLIENTS*2-1:0]       rd_done_status,

    /* read destination RAM write lanes */
    output reg  [KEEP_WIDTH-1:0]         ram_wr_en,
    output reg  [KEEP_WIDTH*RD_RAM_AW-1:0] ram_wr_addr,
    output wire [DATA_WIDTH-1:0]         ram_wr_data,

    /* write jobs: write source RAM or immediate data -> host memory */
    input  wire [WR_CLIENTS-1:0]         wr_req_valid,
    output wire [WR_CLIENTS-1:0]         wr_req_ready,
    input  wire [WR_CLIENTS*64-1:0]      wr_req_addr,
    input  wire [WR_CLIENTS*16-1:0]      wr_req_len,
    input  wire [WR_CLIENTS-1:0]         wr_req_imm_en,
    input  wire [WR_CLIENTS*128-1:0]     wr_req_imm,
    input  wire [WR_CLIENTS*WR_RAM_AW-1:0] wr_req_ram,
    output reg  [WR_CLIENTS-1:0]         wr_done,

    /* write source RAM read lanes (combinational) */
    output reg  [KEEP_WIDTH*WR_RAM_AW-1:0] src_rd_addr,
    input  wire [DATA_WIDTH-1:0]         src_rd_data,

    /* statistics and status */
    output reg                           stat_mem_rd,
    output reg                           stat_mem_wr,
    output reg                           stat_cpl_rx,
    output reg                           stat_unexp_cpl,
    output reg                           stat_timeout,
    output reg                           stat_rd_err,
    output reg  [7:0]                    tags_in_flight,
    output reg  [7:0]                    tags_quarantined
);

localparam RD_CW = RD_CLIENTS > 1 ? $clog2(RD_CLIENTS) : 1;
localparam WR_CW = WR_CLIENTS > 1 ? $clog2(WR_CLIENTS) : 1;

localparam [3:0] REQ_TYPE_MEM_RD = 4'b0000;
localparam [3:0] REQ_TYPE_MEM_WR = 4'b0001;

localparam [1:0] DONE_OK      = 2'd0;
localparam [1:0] DONE_ERR     = 2'd1;
localparam [1:0] DONE_TIMEOUT = 2'd2;

localparam [2:0] CPL_STATUS_SC = 3'b000;

// RC descriptor is 3 DWORDs, RQ descriptor 4 DWORDs
localparam [15:0] RC_HDR_DW = 16'd3;
localparam [15:0] RQ_HDR_DW = 16'd4;
localparam integer KW_INT = KEEP_WIDTH;
localparam [15:0] KW16 = KW_INT[15:0];
// beat in which the last RC descriptor DWORD arrives
localparam [8:0] RC_HDR_BEAT = KEEP_WIDTH >= 4 ? 9'd0 : 9'd1;

initial begin
    if (DATA_WIDTH != 64 && DATA_WIDTH != 128 && DATA_WIDTH != 256) begin
        $error("Error: DATA_WIDTH must be 64, 128 or 256 (instance %m)");
        $finish;
    end
    if (KEEP_WIDTH*32 != DATA_WIDTH) begin
        $error("Error: KEEP_WIDTH must be DATA_WIDTH/32 (instance %m)");
        $finish;
    end
    if (TAG_COUNT > 32 || (1 << TAG_WIDTH) != TAG_COUNT) begin
        $error("Error: TAG_COUNT must be a power of two <= 32 (no extended tags) (instance %m)");
        $finish;
    end
end

// MPS and MRRS in bytes from their configuration-space codes
wire [12:0] mps_bytes  = 13'd128 << cfg_max_payload;
wire [12:0] mrrs_bytes = (cfg_max_read_req > 3'd5) ? 13'd4096 : (13'd128 << cfg_max_read_req);

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

function [3:0] be_mask;  // byte enables for the last 1..4 bytes of a DWORD-aligned transfer
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

// free-running cycle counter for completion timeouts
reg [31:0] now_reg = 32'd0;

/* tag table */
reg                  tag_valid_reg [0:TAG_COUNT-1];
reg                  tag_quar_reg  [0:TAG_COUNT-1];
reg [RD_CW-1:0]      tag_client_reg[0:TAG_COUNT-1];
reg [RD_RAM_AW-1:0]  tag_ram_reg   [0:TAG_COUNT-1];
reg [12:0]           tag_len_reg   [0:TAG_COUNT-1];
reg [31:0]           tag_ts_reg    [0:TAG_COUNT-1];

integer i;

initial begin
    for (i = 0; i < TAG_COUNT; i = i + 1) begin
        tag_valid_reg[i] = 1'b0;
        tag_quar_reg[i] = 1'b0;
        tag_client_reg[i] = {RD_CW{1'b0}};
        tag_ram_reg[i] = {RD_RAM_AW{1'b0}};
        tag_len_reg[i] = 13'd0;
        tag_ts_reg[i] = 32'd0;
    end
end

reg               free_tag_found;
reg [TAG_WIDTH-1:0] free_tag;
integer ci1;
always @* begin
    free_tag_found = 1'b0;
    free_tag = {TAG_WIDTH{1'b0}};
    for (ci1 = TAG_COUNT-1; ci1 >= 0; ci1 = ci1 - 1) begin
        if (!tag_valid_reg[ci1] && !tag_quar_reg[ci1]) begin
            free_tag_found = 1'b1;
            free_tag = ci1[TAG_WIDTH-1:0];
        end
    end
end

/* per-client job bookkeeping */
reg [RD_CLIENTS-1:0] rd_busy_reg = {RD_CLIENTS{1'b0}};
reg [1:0]            rd_status_reg [0:RD_CLIENTS-1];
reg [7:0]            rd_outstanding_reg [0:RD_CLIENTS-1];

initial begin
    for (i = 0; i < RD_CLIENTS; i = i + 1) begin
        rd_status_reg[i] = DONE_OK;
        rd_outstanding_reg[i] = 8'd0;
    end
    // outputs start defined: the counters and engines they feed must never see X (Icarus)
    rd_done = {RD_CLIENTS{1'b0}};
    rd_done_status = {RD_CLIENTS*2{1'b0}};
    wr_done = {WR_CLIENTS{1'b0}};
    stat_mem_rd = 1'b0;
    stat_mem_wr = 1'b0;
    stat_cpl_rx = 1'b0;
    stat_unexp_cpl = 1'b0;
    stat_timeout = 1'b0;
    stat_rd_err = 1'b0;
    tags_in_flight = 8'd0;
    tags_quarantined = 8'd0;
end

/* current read job (being split into TLPs) */
reg                  rj_active_reg = 1'b0;
reg [RD_CW-1:0]      rj_client_reg = {RD_CW{1'b0}};
reg [63:0]           rj_addr_reg = 64'd0;
reg [15:0]           rj_rem_reg = 16'd0;
reg [RD_RAM_AW-1:0]  rj_ram_reg = {RD_RAM_AW{1'b0}};
reg [RD_CW-1:0]      rd_rr_reg = {RD_CW{1'b0}};

/* current write job */
reg                  wj_active_reg = 1'b0;
reg [WR_CW-1:0]      wj_client_reg = {WR_CW{1'b0}};
reg [63:0]           wj_addr_reg = 64'd0;
reg [15:0]           wj_rem_reg = 16'd0;
reg                  wj_imm_en_reg = 1'b0;
reg [127:0]          wj_imm_reg = 128'd0;
reg [WR_RAM_AW-1:0]  wj_ram_reg = {WR_RAM_AW{1'b0}};
reg [WR_CW-1:0]      wr_rr_reg = {WR_CW{1'b0}};

/* RQ emitter: one TLP at a time */
reg                  rq_busy_reg = 1'b0;
reg [8:0]            rq_beat_reg = 9'd0;
reg [127:0]          rq_hdr_reg = 128'd0;
reg [10:0]           rq_ndw_reg = 11'd0;       // payload DWORDs
reg                  rq_imm_en_reg = 1'b0;
reg [127:0]          rq_imm_reg = 128'd0;
reg [WR_RAM_AW-1:0]  rq_ram_reg = {WR_RAM_AW{1'b0}};
reg [3:0]            rq_first_be_reg = 4'd0;
reg [3:0]            rq_last_be_reg = 4'd0;
reg                  rq_wr_last_reg = 1'b0;    // last TLP of a write job
reg [WR_CW-1:0]      rq_wr_client_reg = {WR_CW{1'b0}};
reg                  rq_prio_wr_reg = 1'b0;    // alternate read/write TLPs

assign m_axis_rq_tvalid = rq_busy_reg;
assign m_axis_rq_tuser = {{(RQ_USER_WIDTH-8){1'b0}}, rq_last_be_reg, rq_first_be_reg};

// lane k of beat b carries TLP DWORD b*KEEP_WIDTH+k: header DWORDs first, then payload
integer ca;
/* verilator lint_off UNUSEDSIGNAL */
reg [15:0] sa_idx;  // lane DWORD index; only the RAM-address bits are used
/* verilator lint_on UNUSEDSIGNAL */
reg [WR_RAM_AW-1:0] sa_p;
always @* begin
    src_rd_addr = {KEEP_WIDTH*WR_RAM_AW{1'b0}};
    for (ca = 0; ca < KEEP_WIDTH; ca = ca + 1) begin
        sa_idx = {7'd0, rq_beat_reg} * KW16 + ca[15:0];
        sa_p = sa_idx[WR_RAM_AW-1:0] - RQ_HDR_DW[WR_RAM_AW-1:0];
        src_rd_addr[ca*WR_RAM_AW +: WR_RAM_AW] = rq_ram_reg + sa_p;
    end
end

reg [31:0] rq_dw;
reg [15:0] rq_idx;
reg [1:0]  rq_p;
integer ci2;
always @* begin
    m_axis_rq_tdata = {DATA_WIDTH{1'b0}};
    m_axis_rq_tkeep = {KEEP_WIDTH{1'b0}};
    for (ci2 = 0; ci2 < KEEP_WIDTH; ci2 = ci2 + 1) begin
        rq_idx = {7'd0, rq_beat_reg} * KW16 + ci2[15:0];
        rq_p = rq_idx[1:0] - RQ_HDR_DW[1:0];
        if (rq_idx < RQ_HDR_DW) begin
            rq_dw = rq_hdr_reg[rq_idx[1:0]*32 +: 32];
        end else if (rq_imm_en_reg) begin
            rq_dw = rq_imm_reg[rq_p*32 +: 32];
        end else begin
            rq_dw = src_rd_data[ci2*32 +: 32];
        end
        if (rq_idx < RQ_HDR_DW + {5'd0, rq_ndw_reg}) begin
            m_axis_rq_tdata[ci2*32 +: 32] = rq_dw;
            m_axis_rq_tkeep[ci2] = 1'b1;
        end
    end
    m_axis_rq_tlast = ({7'd0, rq_beat_reg} + 16'd1) * KW16 >= RQ_HDR_DW + {5'd0, rq_ndw_reg};
end

/* next read TLP of the current job */
wire [12:0] rd_tlp_len = min3(rj_rem_reg, mrrs_bytes, 13'h1000 - {1'b0, rj_addr_reg[11:0]});
wire [10:0] rd_tlp_dw  = rd_tlp_len[12:2] + {10'd0, rd_tlp_len[1:0] != 2'd0};
wire [3:0]  rd_tlp_first_be = (rd_tlp_dw == 11'd1) ? be_mask(rd_tlp_len[1:0]) : 4'b1111;
wire [3:0]  rd_tlp_last_be  = (rd_tlp_dw == 11'd1) ? 4'b0000 : be_mask(rd_tlp_len[1:0]);
wire        rd_tlp_can = rj_active_reg && free_tag_found && rd_outstanding_reg[rj_client_reg] != 8'hff;

/* next write TLP of the current job */
wire [12:0] wr_tlp_len = min3(wj_rem_reg, mps_bytes, 13'h1000 - {1'b0, wj_addr_reg[11:0]});
wire [10:0] wr_tlp_dw  = wr_tlp_len[12:2] + {10'd0, wr_tlp_len[1:0] != 2'd0};
wire [3:0]  wr_tlp_first_be = (wr_tlp_dw == 11'd1) ? be_mask(wr_tlp_len[1:0]) : 4'b1111;
wire [3:0]  wr_tlp_last_be  = (wr_tlp_dw == 11'd1) ? 4'b0000 : be_mask(wr_tlp_len[1:0]);
wire        wr_tlp_can = wj_active_reg;

wire launch_rd = !rq_busy_reg && rd_tlp_can && (!wr_tlp_can || !rq_prio_wr_reg);
wire launch_wr = !rq_busy_reg && wr_tlp_can && !launch_rd;

/* job acceptance (round robin among clients) */
reg [RD_CW-1:0] rd_pick;
reg             rd_pick_ok;
reg [WR_CW-1:0] wr_pick;
reg             wr_pick_ok;
/* verilator lint_off UNUSEDSIGNAL */
// sum of a client index and an offset before the modulo: the top bit is consumed by the modulo
reg [RD_CW:0]   rd_k;
reg [WR_CW:0]   wr_k;
/* verilator lint_on UNUSEDSIGNAL */
integer ci3;
always @* begin
    rd_pick = {RD_CW{1'b0}};
    rd_pick_ok = 1'b0;
    for (ci3 = RD_CLIENTS; ci3 >= 1; ci3 = ci3 - 1) begin
        rd_k = ({1'b0, rd_rr_reg} + ci3[RD_CW:0]) % RD_CLIENTS;
        if (rd_req_valid[rd_k[RD_CW-1:0]] && !rd_busy_reg[rd_k[RD_CW-1:0]]) begin
            rd_pick = rd_k[RD_CW-1:0];
            rd_pick_ok = 1'b1;
        end
    end
    wr_pick = {WR_CW{1'b0}};
    wr_pick_ok = 1'b0;
    for (ci3 = WR_CLIENTS; ci3 >= 1; ci3 = ci3 - 1) begin
        wr_k = ({1'b0, wr_rr_reg} + ci3[WR_CW:0]) % WR_CLIENTS;
        if (wr_req_valid[wr_k[WR_CW-1:0]]) begin
            wr_pick = wr_k[WR_CW-1:0];
            wr_pick_ok = 1'b1;
        end
    end
    if (rj_active_reg) rd_pick_ok = 1'b0;
    if (wj_active_reg) wr_pick_ok = 1'b0;
end

genvar g;
generate
    for (g = 0; g < RD_CLIENTS; g = g + 1) begin : rd_ready
        assign rd_req_ready[g] = rd_pick_ok && rd_pick == g;
    end
    for (g = 0; g < WR_CLIENTS; g = g + 1) begin : wr_ready
        assign wr_req_ready[g] = wr_pick_ok && wr_pick == g;
    end
endgenerate

/* RC receiver */
reg [8:0]            rc_beat_reg = 9'd0;
reg [95:0]           rc_hdr_reg = 96'd0;
reg                  rc_ok_reg = 1'b0;
reg [RD_RAM_AW-1:0]  rc_dst_reg = {RD_RAM_AW{1'b0}};

assign s_axis_rc_tready = 1'b1;
assign ram_wr_data = s_axis_rc_tdata;

reg [95:0]  rc_hdr;
reg [15:0]  rc_idx;
integer ci4;
always @* begin
    rc_hdr = rc_hdr_reg;
    for (ci4 = 0; ci4 < KEEP_WIDTH; ci4 = ci4 + 1) begin
        rc_idx = {7'd0, rc_beat_reg} * KW16 + ci4[15:0];
        if (rc_idx < RC_HDR_DW) begin
            rc_hdr[rc_idx[1:0]*32 +: 32] = s_axis_rc_tdata[ci4*32 +: 32];
        end
    end
end

wire [3:0]            rc_err_code  = rc_hdr[15:12];
wire [12:0]           rc_byte_cnt  = rc_hdr[28:16];
wire                  rc_req_done  = rc_hdr[30];
wire [2:0]            rc_status    = rc_hdr[45:43];
wire                  rc_poisoned  = rc_hdr[46];
wire [7:0]            rc_tag8      = rc_hdr[71:64];
wire [TAG_WIDTH-1:0]  rc_tag       = rc_tag8[TAG_WIDTH-1:0];
wire                  rc_tag_in_range = rc_tag8 < TAG_COUNT;
wire                  rc_hdr_beat  = s_axis_rc_tvalid && rc_beat_reg == RC_HDR_BEAT;
wire                  rc_tag_live  = rc_tag_in_range && tag_valid_reg[rc_tag];
wire                  rc_good      = rc_tag_live && rc_err_code == 4'd0 && rc_status == CPL_STATUS_SC && !rc_poisoned;
wire [12:0]           rc_offset    = tag_len_reg[rc_tag] - rc_byte_cnt;
wire [RD_RAM_AW-1:0]  rc_dst_comb  = tag_ram_reg[rc_tag] + {{(RD_RAM_AW-11){1'b0}}, rc_offset[12:2]};
wire                  rc_ok_cur    = rc_hdr_beat ? rc_good : rc_ok_reg;
wire [RD_RAM_AW-1:0]  rc_dst_cur   = rc_hdr_beat ? rc_dst_comb : rc_dst_reg;

reg [15:0] rc_widx;
reg [RD_RAM_AW-1:0] rc_p;
integer ci5;
always @* begin
    ram_wr_en = {KEEP_WIDTH{1'b0}};
    ram_wr_addr = {KEEP_WIDTH*RD_RAM_AW{1'b0}};
    for (ci5 = 0; ci5 < KEEP_WIDTH; ci5 = ci5 + 1) begin
        rc_widx = {7'd0, rc_beat_reg} * KW16 + ci5[15:0];
        rc_p = rc_widx[RD_RAM_AW-1:0] - RC_HDR_DW[RD_RAM_AW-1:0];
        ram_wr_addr[ci5*RD_RAM_AW +: RD_RAM_AW] = rc_dst_cur + rc_p;
        if (s_axis_rc_tvalid && s_axis_rc_tkeep[ci5] && rc_widx >= RC_HDR_DW && rc_ok_cur) begin
            ram_wr_en[ci5] = 1'b1;
        end
    end
end

/* completion timeout scan: one tag per cycle */
reg [TAG_WIDTH-1:0] scan_reg = {TAG_WIDTH{1'b0}};
wire scan_hit = tag_valid_reg[scan_reg] && (now_reg - tag_ts_reg[scan_reg]) >= cpl_timeout
                && !(rc_hdr_beat && rc_tag_in_range && rc_tag == scan_reg);

/* sequential logic */
// Blocking assignments below are to per-cycle temporaries (inc_cnt, dec_cnt, n_valid, n_quar) that are
// computed and consumed within the same clock edge; every register uses non-blocking assignment.
/* verilator lint_off BLKSEQ */
reg [7:0] inc_cnt [0:RD_CLIENTS-1];
reg [7:0] dec_cnt [0:RD_CLIENTS-1];
reg [7:0] n_valid, n_quar;

always @(posedge clk) begin
    now_reg <= now_reg + 32'd1;
    rd_done <= {RD_CLIENTS{1'b0}};
    wr_done <= {WR_CLIENTS{1'b0}};
    stat_mem_rd <= 1'b0;
    stat_mem_wr <= 1'b0;
    stat_cpl_rx <= 1'b0;
    stat_unexp_cpl <= 1'b0;
    stat_timeout <= 1'b0;
    stat_rd_err <= 1'b0;

    for (i = 0; i < RD_CLIENTS; i = i + 1) begin
        inc_cnt[i] = 8'd0;
        dec_cnt[i] = 8'd0;
    end

    // accept jobs
    if (rd_pick_ok) begin
        rj_active_reg <= 1'b1;
        rj_client_reg <= rd_pick;
        rj_addr_reg <= rd_req_addr[rd_pick*64 +: 64];
        rj_rem_reg <= rd_req_len[rd_pick*16 +: 16];
        rj_ram_reg <= rd_req_ram[rd_pick*RD_RAM_AW +: RD_RAM_AW];
        rd_busy_reg[rd_pick] <= 1'b1;
        rd_status_reg[rd_pick] <= DONE_OK;
        rd_rr_reg <= rd_pick;
        if (rd_req_len[rd_pick*16 +: 16] == 16'd0) begin
            rj_active_reg <= 1'b0;
        end
    end
    if (wr_pick_ok) begin
        wj_active_reg <= wr_req_len[wr_pick*16 +: 16] != 16'd0;
        wj_client_reg <= wr_pick;
        wj_addr_reg <= wr_req_addr[wr_pick*64 +: 64];
        wj_rem_reg <= wr_req_len[wr_pick*16 +: 16];
        wj_imm_en_reg <= wr_req_imm_en[wr_pick];
        wj_imm_reg <= wr_req_imm[wr_pick*128 +: 128];
        wj_ram_reg <= wr_req_ram[wr_pick*WR_RAM_AW +: WR_RAM_AW];
        wr_rr_reg <= wr_pick;
        if (wr_req_len[wr_pick*16 +: 16] == 16'd0) begin
            wr_done[wr_pick] <= 1'b1;
        end
    end

    // launch one TLP
    if (launch_rd) begin
        rq_busy_reg <= 1'b1;
        rq_beat_reg <= 9'd0;
        rq_hdr_reg <= {1'b0, 3'b000, 3'b000, 1'b0, 16'h0000, {(8-TAG_WIDTH){1'b0}}, free_tag,
                       16'h0000, 1'b0, REQ_TYPE_MEM_RD, rd_tlp_dw,
                       rj_addr_reg[63:32],
                       rj_addr_reg[31:2], 2'b00};
        rq_ndw_reg <= 11'd0;
        rq_imm_en_reg <= 1'b0;
        rq_first_be_reg <= rd_tlp_first_be;
        rq_last_be_reg <= rd_tlp_last_be;
        rq_wr_last_reg <= 1'b0;
        rq_prio_wr_reg <= 1'b1;
        tag_valid_reg[free_tag] <= 1'b1;
        tag_client_reg[free_tag] <= rj_client_reg;
        tag_ram_reg[free_tag] <= rj_ram_reg;
        tag_len_reg[free_tag] <= rd_tlp_len;
        tag_ts_reg[free_tag] <= now_reg;
        inc_cnt[rj_client_reg] = 8'd1;
        rj_addr_reg <= rj_addr_reg + {51'd0, rd_tlp_len};
        rj_rem_reg <= rj_rem_reg - {3'd0, rd_tlp_len};
        rj_ram_reg <= rj_ram_reg + {{(RD_RAM_AW-11){1'b0}}, rd_tlp_dw};
        if (rj_rem_reg == {3'd0, rd_tlp_len}) begin
            rj_active_reg <= 1'b0;
        end
        stat_mem_rd <= 1'b1;
    end else if (launch_wr) begin
        rq_busy_reg <= 1'b1;
        rq_beat_reg <= 9'd0;
        rq_hdr_reg <= {1'b0, 3'b000, 3'b000, 1'b0, 16'h0000, 8'h00,
                       16'h0000, 1'b0, REQ_TYPE_MEM_WR, wr_tlp_dw,
                       wj_addr_reg[63:32],
                       wj_addr_reg[31:2], 2'b00};
        rq_ndw_reg <= wr_tlp_dw;
        rq_imm_en_reg <= wj_imm_en_reg;
        rq_imm_reg <= wj_imm_reg;
        rq_ram_reg <= wj_ram_reg;
        rq_first_be_reg <= wr_tlp_first_be;
        rq_last_be_reg <= wr_tlp_last_be;
        rq_wr_last_reg <= wj_rem_reg == {3'd0, wr_tlp_len};
        rq_wr_client_reg <= wj_client_reg;
        rq_prio_wr_reg <= 1'b0;
        wj_addr_reg <= wj_addr_reg + {51'd0, wr_tlp_len};
        wj_rem_reg <= wj_rem_reg - {3'd0, wr_tlp_len};
        wj_ram_reg <= wj_ram_reg + {{(WR_RAM_AW-11){1'b0}}, wr_tlp_dw};
        wj_imm_reg <= wj_imm_reg >> (wr_tlp_dw*32);
        if (wj_rem_reg == {3'd0, wr_tlp_len}) begin
            wj_active_reg <= 1'b0;
        end
        stat_mem_wr <= 1'b1;
    end

    // RQ beats
    if (rq_busy_reg && m_axis_rq_tready) begin
        rq_beat_reg <= rq_beat_reg + 9'd1;
        if (m_axis_rq_tlast) begin
            rq_busy_reg <= 1'b0;
            if (rq_wr_last_reg) begin
                wr_done[rq_wr_client_reg] <= 1'b1;
            end
        end
    end

    // RC beats
    if (s_axis_rc_tvalid) begin
        rc_hdr_reg <= rc_hdr;
        rc_beat_reg <= s_axis_rc_tlast ? 9'd0 : rc_beat_reg + 9'd1;
    end
    if (rc_hdr_beat) begin
        rc_ok_reg <= rc_good;
        rc_dst_reg <= rc_dst_comb;
        stat_cpl_rx <= 1'b1;
        if (!rc_tag_live) begin
            // no request of ours waits for this tag: a late or stray completion
            stat_unexp_cpl <= 1'b1;
            if (rc_tag_in_range && tag_quar_reg[rc_tag] && rc_req_done) begin
                tag_quar_reg[rc_tag] <= 1'b0;
            end
        end else begin
            if (!rc_good) begin
                rd_status_reg[tag_client_reg[rc_tag]] <= DONE_ERR;
                stat_rd_err <= 1'b1;
            end
            if (rc_req_done) begin
                tag_valid_reg[rc_tag] <= 1'b0;
                dec_cnt[tag_client_reg[rc_tag]] = 8'd1;
            end
        end
    end

    // completion timeout: the tag stays quarantined until a late completion frees it
    scan_reg <= scan_reg + 1'b1;
    if (scan_hit) begin
        tag_valid_reg[scan_reg] <= 1'b0;
        tag_quar_reg[scan_reg] <= 1'b1;
        rd_status_reg[tag_client_reg[scan_reg]] <= DONE_TIMEOUT;
        dec_cnt[tag_client_reg[scan_reg]] = dec_cnt[tag_client_reg[scan_reg]] + 8'd1;
        stat_timeout <= 1'b1;
    end

    for (i = 0; i < RD_CLIENTS; i = i + 1) begin
        rd_outstanding_reg[i] <= rd_outstanding_reg[i] + inc_cnt[i] - dec_cnt[i];
        // a job is done when all its TLPs are issued and answered
        if (rd_busy_reg[i] && !(rj_active_reg && rj_client_reg == i[RD_CW-1:0])
                && !(rd_pick_ok && rd_pick == i[RD_CW-1:0])
                && rd_outstanding_reg[i] == 8'd0 && inc_cnt[i] == 8'd0) begin
            rd_busy_reg[i] <= 1'b0;
            rd_done[i] <= 1'b1;
            rd_done_status[i*2 +: 2] <= rd_status_reg[i];
        end
    end

    n_valid = 8'd0;
    n_quar = 8'd0;
    for (i = 0; i < TAG_COUNT; i = i + 1) begin
        n_valid = n_valid + {7'd0, tag_valid_reg[i]};
        n_quar = n_quar + {7'd0, tag_quar_reg[i]};
    end
    tags_in_flight <= n_valid;
    tags_quarantined <= n_quar;

    if (rst) begin
        rj_active_reg <= 1'b0;
        wj_active_reg <= 1'b0;
        rq_busy_reg <= 1'b0;
        rq_beat_reg <= 9'd0;
        rc_beat_reg <= 9'd0;
        rd_busy_reg <= {RD_CLIENTS{1'b0}};
        rd_done <= {RD_CLIENTS{1'b0}};
        wr_done <= {WR_CLIENTS{1'b0}};
        for (i = 0; i < RD_CLIENTS; i = i + 1) begin
            rd_outstanding_reg[i] <= 8'd0;
        end
        for (i = 0; i < TAG_COUNT; i = i + 1) begin
            tag_valid_reg[i] <= 1'b0;
            tag_quar_reg[i] <= 1'b0;
        end
    end
end
/* verilator lint_on BLKSEQ */

// rc_offset is a byte offset of a DWORD-aligned transfer (low bits always 0); RC tuser carries only
// byte enables/parity that DWORD-aligned completions do not need
wire unused_ok = &{1'b0, rc_offset[1:0], s_axis_rc_tuser};

endmodule

`resetall
