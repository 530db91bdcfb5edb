`resetall
`timescale 1ns / 1ps
`default_nettype none

/* MMIO completer: CQ requests to a DWORD register bus, CC completions back */
module nic_mmio #
(
    // PCIe user interface data width (64, 128, 256)
    parameter DATA_WIDTH = 64,
    // DWORD lanes per beat
    parameter KEEP_WIDTH = DATA_WIDTH/32,
    // CQ tuser width (UltraScale+, data width < 512)
    parameter CQ_USER_WIDTH = 88,
    // CC tuser width (UltraScale+, data width < 512)
    parameter CC_USER_WIDTH = 33,
    // register address width (bytes) decoded from BAR0
    parameter REG_ADDR_WIDTH = 16,
    // longest request served, in DWORDs (longer reads: CA; longer writes: dropped)
    parameter MAX_DW = 16
)
(
    input  wire                          clk,
    input  wire                          rst,

    /* completer request (from the hard IP) */
    input  wire [DATA_WIDTH-1:0]         s_axis_cq_tdata,
    input  wire [KEEP_WIDTH-1:0]         s_axis_cq_tkeep,
    input  wire                          s_axis_cq_tlast,
    input  wire [CQ_USER_WIDTH-1:0]      s_axis_cq_tuser,
    input  wire                          s_axis_cq_tvalid,
    output wire                          s_axis_cq_tready,

    /* completer completion (to the hard IP) */
    output reg  [DATA_WIDTH-1:0]         m_axis_cc_tdata,
    output reg  [KEEP_WIDTH-1:0]         m_axis_cc_tkeep,
    output reg                           m_axis_cc_tlast,
    output wire [CC_USER_WIDTH-1:0]      m_axis_cc_tuser,
    output wire                          m_axis_cc_tvalid,
    input  wire                          m_axis_cc_tready,

    /* register bus: one DWORD per cycle, reads combinational */
    output reg                           reg_wr_en,
    output reg  [REG_ADDR_WIDTH-1:0]     reg_wr_addr,
    output reg  [31:0]                   reg_wr_data,
    output reg  [3:0]                    reg_wr_strb,
    output reg                           reg_rd_en,
    output reg  [REG_ADDR_WIDTH-1:0]     reg_rd_addr,
    input  wire [31:0]                   reg_rd_data,

    /* statistics */
    output reg                           stat_req_rx,
    output reg                           stat_cpl_tx,
    output reg                           stat_ur_sent,
    output reg                           stat_dropped
);

localparam [15:0] CQ_HDR_DW = 16'd4;
localparam [15:0] CC_HDR_DW = 16'd3;
localparam integer KW_INT = KEEP_WIDTH;
localparam [15:0] KW16 = KW_INT[15:0];
localparam [15:0] MAX_DW16 = MAX_DW;
localparam BUF_AW = $clog2(MAX_DW);

localparam [3:0] REQ_MEM_RD = 4'b0000;
localparam [3:0] REQ_MEM_WR = 4'b0001;

localparam [2:0] CPL_STATUS_SC = 3'b000;
localparam [2:0] CPL_STATUS_UR = 3'b001;
localparam [2:0] CPL_STATUS_CA = 3'b100;

localparam [1:0] STATE_RECV = 2'd0;
localparam [1:0] STATE_WRITE = 2'd1;
localparam [1:0] STATE_READ = 2'd2;
localparam [1:0] STATE_CPL = 2'd3;

initial begin
    if (KEEP_WIDTH*32 != DATA_WIDTH) begin
        $error("Error: KEEP_WIDTH must be DATA_WIDTH/32 (instance %m)");
        $finish;
    end
    if ((1 << BUF_AW) != MAX_DW) begin
        $error("Error: MAX_DW must be a power of two (instance %m)");
        $finish;
    end
end

reg [1:0]   state_reg;
reg [8:0]   beat_reg;
reg [127:0] hdr_reg;
reg [3:0]   first_be_reg;
reg [3:0]   last_be_reg;
reg [31:0]  buf_reg [0:MAX_DW-1];
reg [10:0]  cnt_reg;         // DWORDs written / read so far
reg [2:0]   cpl_status_reg;
reg [10:0]  cpl_ndw_reg;     // completion payload DWORDs
reg [8:0]   cc_beat_reg;

// every register starts defined before the first reset (Icarus starts at X); reset clears the control state
integer i;
initial begin
    state_reg = STATE_RECV;
    beat_reg = 9'd0;
    hdr_reg = 128'd0;
    first_be_reg = 4'd0;
    last_be_reg = 4'd0;
    cnt_reg = 11'd0;
    cpl_status_reg = CPL_STATUS_SC;
    cpl_ndw_reg = 11'd0;
    cc_beat_reg = 9'd0;
    for (i = 0; i < MAX_DW; i = i + 1) buf_reg[i] = 32'd0;
    // statistics pulses start defined: the counters they feed must never see X (Icarus)
    stat_req_rx = 1'b0;
    stat_cpl_tx = 1'b0;
    stat_ur_sent = 1'b0;
    stat_dropped = 1'b0;
end

assign s_axis_cq_tready = state_reg == STATE_RECV;
assign m_axis_cc_tvalid = state_reg == STATE_CPL;
assign m_axis_cc_tuser = {CC_USER_WIDTH{1'b0}};

/* request fields from the descriptor */
wire [63:0] req_addr     = {hdr_reg[63:2], 2'b00};
wire [10:0] req_dw       = hdr_reg[74:64];
wire [3:0]  req_type     = hdr_reg[78:75];
wire [15:0] req_id       = hdr_reg[95:80];
wire [7:0]  req_tag      = hdr_reg[103:96];
wire [7:0]  req_func     = hdr_reg[111:104];
wire [2:0]  req_bar      = hdr_reg[114:112];
wire [2:0]  req_tc       = hdr_reg[123:121];
wire [2:0]  req_attr     = hdr_reg[126:124];
wire [11:0] req_dw_count = (req_dw == 11'd0) ? 12'd1024 : {1'b0, req_dw};

/* byte count and lower address of a memory read completion (PCIe 2.2.9) */
function [2:0] lead_zeros;  // index of the first enabled byte
    input [3:0] be;
    begin
        casez (be)
            4'b???1: lead_zeros = 3'd0;
            4'b??10: lead_zeros = 3'd1;
            4'b?100: lead_zeros = 3'd2;
            4'b1000: lead_zeros = 3'd3;
            default: lead_zeros = 3'd0;
        endcase
    end
endfunction

function [2:0] trail_zeros;  // disabled bytes after the last enabled byte
    input [3:0] be;
    begin
        casez (be)
            4'b1???: trail_zeros = 3'd0;
            4'b01??: trail_zeros = 3'd1;
            4'b001?: trail_zeros = 3'd2;
            4'b0001: trail_zeros = 3'd3;
            default: trail_zeros = 3'd0;
        endcase
    end
endfunction

reg [12:0] rd_byte_cnt;
always @* begin
    if (req_dw_count == 12'd1) begin
        if (first_be_reg == 4'd0) begin
            rd_byte_cnt = 13'd1;
        end else begin
            rd_byte_cnt = 13'd4 - {10'd0, lead_zeros(first_be_reg)} - {10'd0, trail_zeros(first_be_reg)};
        end
    end else begin
        rd_byte_cnt = {req_dw_count[10:0], 2'b00} - {10'd0, lead_zeros(first_be_reg)} - {10'd0, trail_zeros(last_be_reg)};
    end
end

/* byte enables of the DWORD being written */
wire [3:0] cur_be = (cnt_reg == 11'd0) ? first_be_reg :
                    (cnt_reg == req_dw_count[10:0] - 11'd1) ? last_be_reg : 4'b1111;

always @* begin
    reg_wr_en = state_reg == STATE_WRITE;
    reg_wr_addr = req_addr[REG_ADDR_WIDTH-1:0] + {{(REG_ADDR_WIDTH-13){1'b0}}, cnt_reg, 2'b00};
    reg_wr_data = buf_reg[cnt_reg[BUF_AW-1:0]];
    reg_wr_strb = cur_be;
    reg_rd_en = state_reg == STATE_READ;
    reg_rd_addr = req_addr[REG_ADDR_WIDTH-1:0] + {{(REG_ADDR_WIDTH-13){1'b0}}, cnt_reg, 2'b00};
end

/* completion byte count / lower address (non-memory-read completions: 4 and 0) */
wire [12:0] cpl_byte_cnt = req_type == REQ_MEM_RD ? rd_byte_cnt : 13'd4;
wire [2:0]  first_byte = lead_zeros(first_be_reg);
wire [6:0]  cpl_lower_addr = req_type == REQ_MEM_RD ? {req_addr[6:2], first_byte[1:0]} : 7'd0;

/* completion emitter */
wire [95:0] cc_hdr = {1'b0, req_attr, req_tc, 1'b0, 8'h00, req_func, req_tag,
                      req_id, 1'b0, 1'b0, cpl_status_reg, cpl_ndw_reg,
                      3'b000, cpl_byte_cnt, 6'd0, 2'b00, 1'b0, cpl_lower_addr};

reg [15:0] cc_idx;
reg [BUF_AW-1:0] cc_p;
integer ci1;
always @* begin
    m_axis_cc_tdata = {DATA_WIDTH{1'b0}};
    m_axis_cc_tkeep = {KEEP_WIDTH{1'b0}};
    for (ci1 = 0; ci1 < KEEP_WIDTH; ci1 = ci1 + 1) begin
        cc_idx = {7'd0, cc_beat_reg} * KW16 + ci1[15:0];
        cc_p = cc_idx[BUF_AW-1:0] - CC_HDR_DW[BUF_AW-1:0];
        if (cc_idx < CC_HDR_DW) begin
            m_axis_cc_tdata[ci1*32 +: 32] = cc_hdr[cc_idx[1:0]*32 +: 32];
            m_axis_cc_tkeep[ci1] = 1'b1;
        end else if (cc_idx < CC_HDR_DW + {5'd0, cpl_ndw_reg}) begin
            m_axis_cc_tdata[ci1*32 +: 32] = buf_reg[cc_p];
            m_axis_cc_tkeep[ci1] = 1'b1;
        end
    end
    m_axis_cc_tlast = ({7'd0, cc_beat_reg} + 16'd1) * KW16 >= CC_HDR_DW + {5'd0, cpl_ndw_reg};
end

/* request receiver: descriptor and up to MAX_DW payload DWORDs */
reg [127:0] hdr_next;
reg [15:0]  cq_idx;
reg [15:0]  cq_p;
reg [KEEP_WIDTH-1:0] pl_we;             // lane carries a payload DWORD to store
reg [KEEP_WIDTH*BUF_AW-1:0] pl_waddr;   // and where
integer ci2;
always @* begin
    hdr_next = hdr_reg;
    pl_we = {KEEP_WIDTH{1'b0}};
    pl_waddr = {KEEP_WIDTH*BUF_AW{1'b0}};
    for (ci2 = 0; ci2 < KEEP_WIDTH; ci2 = ci2 + 1) begin
        cq_idx = {7'd0, beat_reg} * KW16 + ci2[15:0];
        cq_p = cq_idx - CQ_HDR_DW;
        if (cq_idx < CQ_HDR_DW) begin
            hdr_next[cq_idx[1:0]*32 +: 32] = s_axis_cq_tdata[ci2*32 +: 32];
        end else if (cq_p < MAX_DW16 && s_axis_cq_tkeep[ci2]) begin
            pl_we[ci2] = 1'b1;
        end
        pl_waddr[ci2*BUF_AW +: BUF_AW] = cq_p[BUF_AW-1:0];
    end
end

always @(posedge clk) begin
    stat_req_rx <= 1'b0;
    stat_cpl_tx <= 1'b0;
    stat_ur_sent <= 1'b0;
    stat_dropped <= 1'b0;

    case (state_reg)
        STATE_RECV: begin
            if (s_axis_cq_tvalid) begin
                hdr_reg <= hdr_next;
                beat_reg <= beat_reg + 9'd1;
                if (beat_reg == 9'd0) begin
                    first_be_reg <= s_axis_cq_tuser[3:0];
                    last_be_reg <= s_axis_cq_tuser[7:4];
                end
                for (i = 0; i < KEEP_WIDTH; i = i + 1) begin
                    if (pl_we[i]) buf_reg[pl_waddr[i*BUF_AW +: BUF_AW]] <= s_axis_cq_tdata[i*32 +: 32];
                end
                if (s_axis_cq_tlast) begin
                    beat_reg <= 9'd0;
                    stat_req_rx <= 1'b1;
                    cnt_reg <= 11'd0;
                    state_reg <= STATE_CPL;
                    // decided from the complete descriptor in hdr_next
                    case (hdr_next[78:75])
                        REQ_MEM_WR: begin
                            if (hdr_next[114:112] == 3'd0 && hdr_next[74:64] != 11'd0 && {5'd0, hdr_next[74:64]} <= MAX_DW16) begin
                                state_reg <= STATE_WRITE;
                            end else begin
                                // posted: no completion may be sent; drop and count
                                stat_dropped <= 1'b1;
                                state_reg <= STATE_RECV;
                            end
                        end
                        REQ_MEM_RD: begin
                            if (hdr_next[114:112] == 3'd0 && hdr_next[74:64] != 11'd0 && {5'd0, hdr_next[74:64]} <= MAX_DW16) begin
                                state_reg <= STATE_READ;
                            end else begin
                                cpl_status_reg <= hdr_next[114:112] == 3'd0 ? CPL_STATUS_CA : CPL_STATUS_UR;
                                cpl_ndw_reg <= 11'd0;
                            end
                        end
                        default: begin
                            // IO, atomics and anything else: Unsupported Request
                            cpl_status_reg <= CPL_STATUS_UR;
                            cpl_ndw_reg <= 11'd0;
                        end
                    endcase
                end
            end
        end
        STATE_WRITE: begin
            cnt_reg <= cnt_reg + 11'd1;
            if (cnt_reg == req_dw_count[10:0] - 11'd1) begin
                state_reg <= STATE_RECV;
            end
        end
        STATE_READ: begin
            buf_reg[cnt_reg[BUF_AW-1:0]] <= reg_rd_data;
            cnt_reg <= cnt_reg + 11'd1;
            if (cnt_reg == req_dw_count[10:0] - 11'd1) begin
                cpl_status_reg <= CPL_STATUS_SC;
                cpl_ndw_reg <= req_dw_count[10:0];
                state_reg <= STATE_CPL;
            end
        end
        STATE_CPL: begin
            if (m_axis_cc_tready) begin
                cc_beat_reg <= cc_beat_reg + 9'd1;
                if (m_axis_cc_tlast) begin
                    cc_beat_reg <= 9'd0;
                    stat_cpl_tx <= 1'b1;
                    stat_ur_sent <= cpl_status_reg != CPL_STATUS_SC;
                    state_reg <= STATE_RECV;
                end
            end
        end
        default: state_reg <= STATE_RECV;
    endcase

    if (rst) begin
        state_reg <= STATE_RECV;
        beat_reg <= 9'd0;
        cc_beat_reg <= 9'd0;
        cnt_reg <= 11'd0;
    end
end

wire unused_ok = &{1'b0, first_byte[2], cq_p[15:BUF_AW], req_bar, s_axis_cq_tuser[CQ_USER_WIDTH-1:8], req_addr[63:REG_ADDR_WIDTH]};

endmodule

`resetall
