`resetall
`timescale 1ns / 1ps
`default_nettype none

/* TX queue engine: descriptor prefetch, data reads of many frames in flight, frames out in order, records */
module nic_tx #
(
    // DWORD address width of the DMA read destination RAM
    parameter RAM_AW = 15,
    // packet buffer: DWORD base and size in the read RAM
    parameter [RAM_AW-1:0] BUF_BASE = 0,
    parameter BUF_DW = 16384,
    // descriptor cache: DWORD base in the read RAM (DESC_CACHE entries of 4 DWORDs)
    parameter [RAM_AW-1:0] DESC_BASE = 16384,
    parameter DESC_CACHE = 16,
    // descriptors one fetch may read at most
    parameter DESC_BATCH = 8,
    // frames between data fetch and completion record
    parameter CTX = 32,
    // longest frame accepted (bytes)
    parameter MAX_FRAME = 16384
)
(
    input  wire                      clk,
    input  wire                      rst,

    /* queue configuration (nic_core) */
    input  wire                      q_enable,     // enabled by the driver
    input  wire                      q_run,        // enabled, valid size, no error, tags not exhausted
    input  wire [63:0]               q_base,
    input  wire [15:0]               q_mask,       // ring size - 1
    input  wire [15:0]               q_prod,

    /* DMA read jobs: descriptors (a) and packet data (b) */
    output reg                       rd_a_valid,
    input  wire                      rd_a_ready,
    output reg  [63:0]               rd_a_addr,
    output reg  [15:0]               rd_a_len,
    output reg  [RAM_AW-1:0]         rd_a_ram,
    output reg                       rd_b_valid,
    input  wire                      rd_b_ready,
    output reg  [63:0]               rd_b_addr,
    output reg  [15:0]               rd_b_len,
    output reg  [RAM_AW-1:0]         rd_b_ram,
    output reg  [7:0]                rd_b_id,
    input  wire                      rd_done_a,    // descriptor read finished
    input  wire                      rd_done_b,    // data read finished (rd_done_id)
    input  wire [7:0]                rd_done_id,
    input  wire [1:0]                rd_done_status,

    /* read RAM: descriptor cache entry and packet data (combinational) */
    output wire [RAM_AW-1:0]         desc_rd_addr,
    input  wire [95:0]               desc_rd_data, // [63:0] buffer address, [95:64] length
    output wire [RAM_AW-1:0]         pkt_rd_addr,
    input  wire [63:0]               pkt_rd_data,

    /* MAC TX */
    output wire [63:0]               m_axis_tdata,
    output wire [7:0]                m_axis_tkeep,
    output wire                      m_axis_tlast,
    output wire                      m_axis_tvalid,
    input  wire                      m_axis_tready,

    /* completion records (nic_cpl_wr) */
    output reg                       cw_valid,
    input  wire                      cw_ready,
    output reg  [15:0]               cw_index,
    output reg  [15:0]               cw_len,
    output reg                       cw_phase,
    input  wire                      cw_done,

    /* to nic_core */
    output reg                       cons_adv,     // a completion record was written: consumer index + 1
    output reg                       err_valid,    // the queue stops with err_code
    output reg  [1:0]                err_code,     // 0 descriptor, 1 DMA error completion, 2 timeout, 3 tags exhausted
    output wire                      drain,        // stopped or disabled, outstanding DMA not finished
    output reg                       stat_pkt,
    output reg  [15:0]               stat_bytes
);

localparam CW = $clog2(CTX);
localparam BW = $clog2(BUF_DW);
localparam DCW = $clog2(DESC_CACHE);

initial begin
    if ((1 << CW) != CTX || (1 << DCW) != DESC_CACHE || (1 << BW) != BUF_DW) begin
        $error("Error: CTX, DESC_CACHE and BUF_DW must be powers of two (instance %m)");
        $finish;
    end
    if (BUF_DW*4 < MAX_FRAME || DESC_BATCH > DESC_CACHE) begin
        $error("Error: the packet buffer must hold a largest frame; DESC_BATCH <= DESC_CACHE (instance %m)");
        $finish;
    end
end

/* descriptor prefetch */
reg [15:0]   fetch_reg;        // descriptors fetched since the queue started (absolute count)
reg [15:0]   issue_reg;        // descriptors turned into frames
reg          df_busy_reg;      // a descriptor read is in flight
reg [4:0]    df_count_reg;     // descriptors it reads
reg          stopped_reg;      // an error stopped the queue until the driver disables it
reg          restart_reg;      // the driver disabled the queue: drain, then start afresh

/* frame contexts: tail (allocated) -> send (data ready, MAC out) -> rec (record requested) -> head (record done) */
reg [CW:0]       ctx_tail_reg, ctx_send_reg, ctx_rec_reg, ctx_head_reg;
reg [BW-1:0]     ctx_start [0:CTX-1];   // DWORD offset in the packet buffer
reg [BW:0]       ctx_need  [0:CTX-1];   // DWORDs of buffer it holds (wasted tail included)
reg [15:0]       ctx_len   [0:CTX-1];
reg [15:0]       ctx_idx   [0:CTX-1];   // ring index of its descriptor
reg              ctx_ready [0:CTX-1];
reg [CW:0]       data_inflight_reg;
reg [CW:0]       rec_inflight_reg;

/* packet buffer (frames are contiguous: an allocation that would wrap starts at 0) */
reg [BW-1:0]     buf_wr_reg;
reg [BW:0]       buf_used_reg;

/* MAC sender */
reg              sending_reg;
reg [15:0]       tx_ptr_reg;
reg              rec_phase_reg;

integer i;
initial begin
    fetch_reg = 16'd0;
    issue_reg = 16'd0;
    df_busy_reg = 1'b0;
    df_count_reg = 5'd0;
    stopped_reg = 1'b0;
    restart_reg = 1'b0;
    ctx_tail_reg = {(CW+1){1'b0}};
    ctx_send_reg = {(CW+1){1'b0}};
    ctx_rec_reg = {(CW+1){1'b0}};
    ctx_head_reg = {(CW+1){1'b0}};
    data_inflight_reg = {(CW+1){1'b0}};
    rec_inflight_reg = {(CW+1){1'b0}};
    buf_wr_reg = {BW{1'b0}};
    buf_used_reg = {(BW+1){1'b0}};
    sending_reg = 1'b0;
    tx_ptr_reg = 16'd0;
    rec_phase_reg = 1'b0;
    for (i = 0; i < CTX; i = i + 1) begin
        ctx_start[i] = {BW{1'b0}};
        ctx_need[i] = {(BW+1){1'b0}};
        ctx_len[i] = 16'd0;
        ctx_idx[i] = 16'd0;
        ctx_ready[i] = 1'b0;
    end
    rd_a_valid = 1'b0;
    rd_a_addr = 64'd0;
    rd_a_len = 16'd0;
    rd_a_ram = {RAM_AW{1'b0}};
    rd_b_valid = 1'b0;
    rd_b_addr = 64'd0;
    rd_b_len = 16'd0;
    rd_b_ram = {RAM_AW{1'b0}};
    rd_b_id = 8'd0;
    cw_valid = 1'b0;
    cw_index = 16'd0;
    cw_len = 16'd0;
    cw_phase = 1'b0;
    cons_adv = 1'b0;
    err_valid = 1'b0;
    err_code = 2'd0;
    stat_pkt = 1'b0;
    stat_bytes = 16'd0;
end

wire running = q_run && !stopped_reg && !restart_reg;

/* ---- descriptor fetch: as many as the producer index, the batch, the cache, the ring end and the cache end allow ---- */
wire [15:0] ring_size  = q_mask + 16'd1;
wire [15:0] fetch_ring = fetch_reg & q_mask;
wire [15:0] avail      = (q_prod - fetch_ring) & q_mask;      // posted by the driver, not yet fetched
wire [15:0] cached     = fetch_reg - issue_reg;               // fetched, not yet turned into frames
wire [15:0] cache_free = DESC_CACHE[15:0] - cached;
wire [15:0] to_ring_end  = ring_size - fetch_ring;
wire [15:0] to_cache_end = DESC_CACHE[15:0] - {{(16-DCW){1'b0}}, fetch_reg[DCW-1:0]};
function [15:0] min2;
    input [15:0] a, b;
    begin
        min2 = a < b ? a : b;
    end
endfunction
`ifdef NIC_FAULT_PREFETCH_PAST_PROD
// planted fault: one descriptor past the producer index when fewer than a batch are posted
wire [15:0] df_n = min2(min2(min2(avail == 16'd0 ? 16'd0 : avail + 16'd1, DESC_BATCH[15:0]), cache_free),
                        min2(to_ring_end, to_cache_end));
`elsif NIC_FAULT_FETCH_PAST_RING_END
// planted fault: a fetch is not cut at the ring's last entry (it reads past the ring instead of wrapping)
wire [15:0] df_n = min2(min2(min2(avail, DESC_BATCH[15:0]), cache_free), to_cache_end);
`else
wire [15:0] df_n = min2(min2(min2(avail, DESC_BATCH[15:0]), cache_free), min2(to_ring_end, to_cache_end));
`endif
wire        df_go = running && !df_busy_reg && !rd_a_valid && df_n != 16'd0;

/* ---- next frame from the descriptor cache ---- */
assign desc_rd_addr = DESC_BASE + {{(RAM_AW-DCW-2){1'b0}}, issue_reg[DCW-1:0], 2'b00};
wire [63:0] d_addr = desc_rd_data[63:0];
wire [31:0] d_len  = desc_rd_data[95:64];
wire        d_bad  = d_len == 32'd0 || d_len > MAX_FRAME || d_addr[1:0] != 2'b00;
wire [BW:0] d_need = d_len[BW+1:2] + {{BW{1'b0}}, d_len[1:0] != 2'b00};
wire        d_wrap = {1'b0, buf_wr_reg} + d_need > BUF_DW[BW:0];
wire [BW:0] d_cons = d_wrap ? d_need + (BUF_DW[BW:0] - {1'b0, buf_wr_reg}) : d_need;
wire [BW-1:0] d_start = d_wrap ? {BW{1'b0}} : buf_wr_reg;
wire        ctx_full = (ctx_tail_reg - ctx_head_reg) == CTX[CW:0];
wire        frame_go = running && cached != 16'd0 && !ctx_full && !rd_b_valid;
wire        frame_fits = buf_used_reg + d_cons <= BUF_DW[BW:0];

/* ---- MAC sender: the oldest frame, once its data is in ---- */
wire [CW-1:0] s_ctx   = ctx_send_reg[CW-1:0];
wire          can_send = ctx_send_reg != ctx_tail_reg && ctx_ready[s_ctx] && !stopped_reg && q_enable;
wire [15:0]   s_len   = ctx_len[s_ctx];
wire [15:0]   tx_rem  = s_len - tx_ptr_reg;
assign pkt_rd_addr   = BUF_BASE + {{(RAM_AW-BW){1'b0}}, ctx_start[s_ctx]} + {{(RAM_AW-14){1'b0}}, tx_ptr_reg[15:2]};
assign m_axis_tdata  = pkt_rd_data;
assign m_axis_tkeep  = tx_rem >= 16'd8 ? 8'hff : (8'hff >> (4'd8 - tx_rem[3:0]));
assign m_axis_tlast  = tx_rem <= 16'd8;
assign m_axis_tvalid = sending_reg;
wire   beat_out      = sending_reg && m_axis_tready;
wire   frame_out     = beat_out && m_axis_tlast;

/* ---- completion records, in order ---- */
wire [CW-1:0] r_ctx  = ctx_rec_reg[CW-1:0];
wire          rec_go = ctx_rec_reg != ctx_send_reg && !cw_valid && q_enable;

assign drain = (stopped_reg || !q_run || restart_reg) && (df_busy_reg || rd_a_valid || rd_b_valid || data_inflight_reg != 0
                                           || rec_inflight_reg != 0 || cw_valid || sending_reg);
wire idle_reset = restart_reg && !drain;

always @(posedge clk) begin
    cons_adv <= 1'b0;
    err_valid <= 1'b0;
    stat_pkt <= 1'b0;
    stat_bytes <= 16'd0;

    /* descriptor fetch */
    if (df_go) begin
        rd_a_valid <= 1'b1;
        rd_a_addr <= q_base + {44'd0, fetch_ring, 4'd0};
        rd_a_len <= {df_n[11:0], 4'd0};
        rd_a_ram <= DESC_BASE + {{(RAM_AW-DCW-2){1'b0}}, fetch_reg[DCW-1:0], 2'b00};
        df_count_reg <= df_n[4:0];
        df_busy_reg <= 1'b1;
    end
    if ((rd_a_valid && rd_a_ready) || stopped_reg || restart_reg) rd_a_valid <= 1'b0;  // withdrawn when stopping
    if (rd_a_valid && !rd_a_ready && (stopped_reg || restart_reg)) df_busy_reg <= 1'b0;
    if (rd_done_a) begin
        df_busy_reg <= 1'b0;
        if (rd_done_status != 2'd0) begin
            if (!stopped_reg) begin
                err_valid <= 1'b1;
                err_code <= rd_done_status;
            end
            stopped_reg <= 1'b1;
        end else begin
            fetch_reg <= fetch_reg + {11'd0, df_count_reg};
        end
    end

    /* frame start: validate the descriptor, place the frame, read its data */
    if (frame_go) begin
        if (d_bad) begin
            err_valid <= 1'b1;
            err_code <= 2'd0;
            stopped_reg <= 1'b1;
        end else if (frame_fits) begin
            rd_b_valid <= 1'b1;
            rd_b_addr <= d_addr;
            rd_b_len <= d_len[15:0];
            rd_b_ram <= BUF_BASE + {{(RAM_AW-BW){1'b0}}, d_start};
            rd_b_id <= {{(8-CW){1'b0}}, ctx_tail_reg[CW-1:0]};
            ctx_start[ctx_tail_reg[CW-1:0]] <= d_start;
            ctx_need[ctx_tail_reg[CW-1:0]] <= d_cons;
            ctx_len[ctx_tail_reg[CW-1:0]] <= d_len[15:0];
            ctx_idx[ctx_tail_reg[CW-1:0]] <= issue_reg & q_mask;
            ctx_ready[ctx_tail_reg[CW-1:0]] <= 1'b0;
            ctx_tail_reg <= ctx_tail_reg + 1'b1;
            issue_reg <= issue_reg + 16'd1;
            buf_wr_reg <= d_start + d_need[BW-1:0];
        end
    end
    if ((rd_b_valid && rd_b_ready) || stopped_reg || restart_reg) rd_b_valid <= 1'b0;
    if (rd_done_b) begin
        if (rd_done_status != 2'd0) begin
            if (!stopped_reg) begin
                err_valid <= 1'b1;
                err_code <= rd_done_status;
            end
            stopped_reg <= 1'b1;
        end else begin
            ctx_ready[rd_done_id[CW-1:0]] <= 1'b1;
        end
    end
    data_inflight_reg <= data_inflight_reg + {{CW{1'b0}}, rd_b_valid && rd_b_ready} - {{CW{1'b0}}, rd_done_b};
    buf_used_reg <= buf_used_reg + ((frame_go && !d_bad && frame_fits) ? d_cons : {(BW+1){1'b0}})
                    - (frame_out ? ctx_need[s_ctx] : {(BW+1){1'b0}});

    /* MAC out (a frame that started is finished even if the queue stops) */
    if (!sending_reg && can_send) begin
        sending_reg <= 1'b1;
        tx_ptr_reg <= 16'd0;
    end
    if (beat_out) begin
        tx_ptr_reg <= tx_ptr_reg + 16'd8;
        if (m_axis_tlast) begin
            sending_reg <= 1'b0;
            ctx_send_reg <= ctx_send_reg + 1'b1;
            stat_pkt <= 1'b1;
            stat_bytes <= s_len;
        end
    end

    /* completion records */
    if (rec_go) begin
        cw_valid <= 1'b1;
        cw_index <= ctx_idx[r_ctx];
        cw_len <= ctx_len[r_ctx];
        cw_phase <= rec_phase_reg;
        if (ctx_idx[r_ctx] == q_mask) rec_phase_reg <= !rec_phase_reg;
        ctx_rec_reg <= ctx_rec_reg + 1'b1;
    end
    if (cw_valid && cw_ready) cw_valid <= 1'b0;
    rec_inflight_reg <= rec_inflight_reg + {{CW{1'b0}}, cw_valid && cw_ready} - {{CW{1'b0}}, cw_done};
    if (cw_done) begin
        ctx_head_reg <= ctx_head_reg + 1'b1;
        cons_adv <= 1'b1;
    end

    /* disabled and drained: start afresh (the driver's reset also clears the indices in nic_core) */
    if (!q_enable) restart_reg <= 1'b1;
    if (idle_reset || rst) begin
        restart_reg <= !q_enable;
        fetch_reg <= 16'd0;
        issue_reg <= 16'd0;
        df_busy_reg <= 1'b0;
        stopped_reg <= 1'b0;
        ctx_tail_reg <= {(CW+1){1'b0}};
        ctx_send_reg <= {(CW+1){1'b0}};
        ctx_rec_reg <= {(CW+1){1'b0}};
        ctx_head_reg <= {(CW+1){1'b0}};
        buf_wr_reg <= {BW{1'b0}};
        buf_used_reg <= {(BW+1){1'b0}};
        rec_phase_reg <= 1'b0;
        rd_a_valid <= 1'b0;
        rd_b_valid <= 1'b0;
        cw_valid <= 1'b0;
    end
    if (rst) begin
        data_inflight_reg <= {(CW+1){1'b0}};
        rec_inflight_reg <= {(CW+1){1'b0}};
        sending_reg <= 1'b0;
        cons_adv <= 1'b0;
        err_valid <= 1'b0;
    end
end

wire unused_ok = &{1'b0, d_len[31:BW+2], df_n[15:5], rd_done_id[7:CW]};

endmodule

`resetall
