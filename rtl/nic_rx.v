`resetall
`timescale 1ns / 1ps
`default_nettype none

/* RX queue engine: frame store, descriptor prefetch, frame data written to host buffers, records in order */
module nic_rx #
(
    // PCIe user interface DWORD lanes (the write source read port has one lane each)
    parameter KEEP_WIDTH = 2,
    // DWORD address width of the DMA read destination RAM (descriptor cache lives there)
    parameter RAM_AW = 15,
    // descriptor cache: DWORD base in the read RAM (DESC_CACHE entries of 4 DWORDs)
    parameter [RAM_AW-1:0] DESC_BASE = 16448,
    parameter DESC_CACHE = 16,
    parameter DESC_BATCH = 8,
    // frame store: DWORD address width (modular ring) and frames it keeps
    parameter STORE_AW = 13,
    parameter FRAMES = 16,
    // longest frame kept (bytes); longer frames are cut and flagged
    parameter MAX_FRAME = 16384
)
(
    input  wire                          clk,
    input  wire                          rst,

    /* queue configuration (nic_core) */
    input  wire                          q_enable,
    input  wire                          q_run,
    input  wire [63:0]                   q_base,
    input  wire [15:0]                   q_mask,
    input  wire [15:0]                   q_prod,

    /* frames in (MAC or loopback) */
    input  wire [63:0]                   s_axis_tdata,
    input  wire [7:0]                    s_axis_tkeep,
    input  wire                          s_axis_tlast,
    input  wire                          s_axis_tvalid,
    output wire                          s_axis_tready,

    /* DMA read jobs: descriptors */
    output reg                           rd_valid,
    input  wire                          rd_ready,
    output reg  [63:0]                   rd_addr,
    output reg  [15:0]                   rd_len,
    output reg  [RAM_AW-1:0]             rd_ram,
    input  wire                          rd_done,
    input  wire [1:0]                    rd_done_status,
    output wire [RAM_AW-1:0]             desc_rd_addr,
    input  wire [95:0]                   desc_rd_data,

    /* DMA write jobs: frame data from the store */
    output reg                           wr_valid,
    input  wire                          wr_ready,
    output reg  [63:0]                   wr_addr,
    output reg  [15:0]                   wr_len,
    output reg  [STORE_AW-1:0]           wr_src,
    input  wire                          wr_done,
    input  wire [KEEP_WIDTH*STORE_AW-1:0] src_rd_addr,
    output reg  [KEEP_WIDTH*32-1:0]      src_rd_data,

    /* completion records (nic_cpl_wr) */
    output reg                           cw_valid,
    input  wire                          cw_ready,
    output reg  [15:0]                   cw_index,
    output reg  [15:0]                   cw_len,
    output reg                           cw_trunc,
    output reg                           cw_phase,
    input  wire                          cw_done,

    /* to nic_core */
    output reg                           cons_adv,
    output reg                           irq_event,    // an RX interrupt cause (the record is written)
    output reg                           err_valid,
    output reg  [1:0]                    err_code,
    output wire                          drain,
    output reg                           stat_pkt,
    output reg  [15:0]                   stat_bytes,
    output reg                           stat_trunc
);

localparam STORE_DW = 1 << STORE_AW;
localparam FW = $clog2(FRAMES);
localparam DCW = $clog2(DESC_CACHE);

initial begin
    if ((1 << FW) != FRAMES || (1 << DCW) != DESC_CACHE) begin
        $error("Error: FRAMES and DESC_CACHE must be powers of two (instance %m)");
        $finish;
    end
    if (STORE_DW*4 < 2*MAX_FRAME) begin
        $error("Error: the frame store must hold two largest frames (instance %m)");
        $finish;
    end
end

/* frame store */
reg [31:0]         store [0:STORE_DW-1];
reg [STORE_AW-1:0] st_start_reg;      // where the frame being received starts
reg [15:0]         fr_len_reg;        // bytes of it kept so far
reg [15:0]         fr_beats_reg;      // beats of it (2 DWORDs of store reserved each)
reg                fr_trunc_reg;
reg [STORE_AW:0]   st_used_reg;       // DWORDs reserved in the store
reg [STORE_AW-1:0] fi_start [0:FRAMES-1];
reg [15:0]         fi_len   [0:FRAMES-1];
reg [STORE_AW:0]   fi_rsv   [0:FRAMES-1];
reg                fi_trunc [0:FRAMES-1];
reg [FW:0]         fi_wr_reg, fi_rd_reg;

/* descriptors */
reg [15:0]   fetch_reg, issue_reg;
reg          df_busy_reg;
reg [4:0]    df_count_reg;
reg          stopped_reg;
reg          restart_reg;      // the driver disabled the queue: drain, then start afresh

/* the frame being written to the host */
reg          busy_reg;
reg [15:0]   cur_idx_reg;
reg [15:0]   cur_len_reg;
reg          cur_trunc_reg;
reg [4:0]    rec_inflight_reg;
reg          rec_phase_reg;

integer i;
initial begin
    for (i = 0; i < STORE_DW; i = i + 1) store[i] = 32'd0;
    for (i = 0; i < FRAMES; i = i + 1) begin
        fi_start[i] = {STORE_AW{1'b0}};
        fi_len[i] = 16'd0;
        fi_rsv[i] = {(STORE_AW+1){1'b0}};
        fi_trunc[i] = 1'b0;
    end
    st_start_reg = {STORE_AW{1'b0}};
    fr_len_reg = 16'd0;
    fr_beats_reg = 16'd0;
    fr_trunc_reg = 1'b0;
    st_used_reg = {(STORE_AW+1){1'b0}};
    fi_wr_reg = {(FW+1){1'b0}};
    fi_rd_reg = {(FW+1){1'b0}};
    fetch_reg = 16'd0;
    issue_reg = 16'd0;
    df_busy_reg = 1'b0;
    df_count_reg = 5'd0;
    stopped_reg = 1'b0;
    restart_reg = 1'b0;
    busy_reg = 1'b0;
    cur_idx_reg = 16'd0;
    cur_len_reg = 16'd0;
    cur_trunc_reg = 1'b0;
    rec_inflight_reg = 5'd0;
    rec_phase_reg = 1'b0;
    rd_valid = 1'b0;
    rd_addr = 64'd0;
    rd_len = 16'd0;
    rd_ram = {RAM_AW{1'b0}};
    wr_valid = 1'b0;
    wr_addr = 64'd0;
    wr_len = 16'd0;
    wr_src = {STORE_AW{1'b0}};
    cw_valid = 1'b0;
    cw_index = 16'd0;
    cw_len = 16'd0;
    cw_trunc = 1'b0;
    cw_phase = 1'b0;
    cons_adv = 1'b0;
    irq_event = 1'b0;
    err_valid = 1'b0;
    err_code = 2'd0;
    stat_pkt = 1'b0;
    stat_bytes = 16'd0;
    stat_trunc = 1'b0;
end

function [3:0] popcount8;
    input [7:0] v;
    integer b;
    begin
        popcount8 = 4'd0;
        for (b = 0; b < 8; b = b + 1) popcount8 = popcount8 + {3'd0, v[b]};
    end
endfunction

function [15:0] min2;
    input [15:0] a, b;
    begin
        min2 = a < b ? a : b;
    end
endfunction

/* ---- receive into the store (backpressure when the store or the frame list is full) ---- */
wire fi_full = (fi_wr_reg - fi_rd_reg) == FRAMES[FW:0];
assign s_axis_tready = !fi_full && st_used_reg + {{(STORE_AW-1){1'b0}}, 2'd2} <= STORE_DW[STORE_AW:0];
wire in_beat = s_axis_tvalid && s_axis_tready;
wire keep_beat = {16'd0, fr_len_reg} + 32'd8 <= MAX_FRAME;
wire [STORE_AW-1:0] st_wr = st_start_reg + {fr_beats_reg[STORE_AW-2:0], 1'b0};
// beats of the frame once this beat is stored
wire [STORE_AW-1:0] fr_beats_inc = fr_beats_reg[STORE_AW-1:0] + {{(STORE_AW-1){1'b0}}, keep_beat};

integer cs;
always @* begin
    for (cs = 0; cs < KEEP_WIDTH; cs = cs + 1) begin
        src_rd_data[cs*32 +: 32] = store[src_rd_addr[cs*STORE_AW +: STORE_AW]];
    end
end

/* ---- descriptor fetch (as the TX queue) ---- */
wire running = q_run && !stopped_reg && !restart_reg;
wire [15:0] ring_size    = q_mask + 16'd1;
wire [15:0] fetch_ring   = fetch_reg & q_mask;
wire [15:0] avail        = (q_prod - fetch_ring) & q_mask;
wire [15:0] cached       = fetch_reg - issue_reg;
wire [15:0] cache_free   = DESC_CACHE[15:0] - cached;
wire [15:0] to_ring_end  = ring_size - fetch_ring;
wire [15:0] to_cache_end = DESC_CACHE[15:0] - {{(16-DCW){1'b0}}, fetch_reg[DCW-1:0]};
wire [15:0] df_n  = min2(min2(min2(avail, DESC_BATCH[15:0]), cache_free), min2(to_ring_end, to_cache_end));
wire        df_go = running && !df_busy_reg && !rd_valid && df_n != 16'd0;

/* ---- next stored frame into the next posted buffer ---- */
assign desc_rd_addr = DESC_BASE + {{(RAM_AW-DCW-2){1'b0}}, issue_reg[DCW-1:0], 2'b00};
wire [63:0] d_addr = desc_rd_data[63:0];
wire [31:0] d_len  = desc_rd_data[95:64];
wire        d_bad  = d_len == 32'd0 || d_addr[1:0] != 2'b00;
wire [FW-1:0] f_head = fi_rd_reg[FW-1:0];
wire [15:0] f_len  = fi_len[f_head];
wire        f_cut  = {16'd0, f_len} > d_len;
wire        frame_go = running && fi_wr_reg != fi_rd_reg && cached != 16'd0 && !busy_reg && !cw_valid;

assign drain = (stopped_reg || !q_run || restart_reg) && (df_busy_reg || rd_valid || busy_reg || cw_valid || rec_inflight_reg != 0);
wire idle_reset = restart_reg && !drain;

always @(posedge clk) begin
    cons_adv <= 1'b0;
    irq_event <= 1'b0;
    err_valid <= 1'b0;
    stat_pkt <= 1'b0;
    stat_bytes <= 16'd0;
    stat_trunc <= 1'b0;

    /* store */
    if (in_beat) begin
        if (keep_beat) begin
            store[st_wr] <= s_axis_tdata[31:0];
            store[st_wr + 1'b1] <= s_axis_tdata[63:32];
            fr_len_reg <= fr_len_reg + {12'd0, popcount8(s_axis_tkeep)};
            fr_beats_reg <= fr_beats_reg + 16'd1;
        end else begin
            fr_trunc_reg <= 1'b1;
        end
        if (s_axis_tlast) begin
            fi_start[fi_wr_reg[FW-1:0]] <= st_start_reg;
            fi_len[fi_wr_reg[FW-1:0]] <= keep_beat ? fr_len_reg + {12'd0, popcount8(s_axis_tkeep)} : fr_len_reg;
            fi_rsv[fi_wr_reg[FW-1:0]] <= {fr_beats_inc, 1'b0};
            fi_trunc[fi_wr_reg[FW-1:0]] <= fr_trunc_reg || !keep_beat;
            fi_wr_reg <= fi_wr_reg + 1'b1;
            st_start_reg <= st_start_reg + {fr_beats_inc[STORE_AW-2:0], 1'b0};
            fr_len_reg <= 16'd0;
            fr_beats_reg <= 16'd0;
            fr_trunc_reg <= 1'b0;
        end
    end
    st_used_reg <= st_used_reg + ((in_beat && keep_beat) ? {{(STORE_AW-1){1'b0}}, 2'd2} : {(STORE_AW+1){1'b0}})
                   - ((busy_reg && wr_done) ? fi_rsv[f_head] : {(STORE_AW+1){1'b0}});

    /* descriptor fetch */
    if (df_go) begin
        rd_valid <= 1'b1;
        rd_addr <= q_base + {44'd0, fetch_ring, 4'd0};
        rd_len <= {df_n[11:0], 4'd0};
        rd_ram <= DESC_BASE + {{(RAM_AW-DCW-2){1'b0}}, fetch_reg[DCW-1:0], 2'b00};
        df_count_reg <= df_n[4:0];
        df_busy_reg <= 1'b1;
    end
    if ((rd_valid && rd_ready) || stopped_reg || restart_reg) rd_valid <= 1'b0;  // withdrawn when stopping
    if (rd_valid && !rd_ready && (stopped_reg || restart_reg)) df_busy_reg <= 1'b0;
    if (rd_done) begin
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

    /* write a stored frame to the host */
    if (frame_go) begin
        if (d_bad) begin
            err_valid <= 1'b1;
            err_code <= 2'd0;
            stopped_reg <= 1'b1;
        end else begin
`ifdef NIC_FAULT_IRQ_BEFORE_DATA
            irq_event <= 1'b1;   // planted fault: the RX interrupt cause fires before the frame's data is written
`endif
            busy_reg <= 1'b1;
            wr_valid <= 1'b1;
            wr_addr <= d_addr;
            wr_len <= f_cut ? d_len[15:0] : f_len;
            wr_src <= fi_start[f_head];
            cur_idx_reg <= issue_reg & q_mask;
            cur_len_reg <= f_cut ? d_len[15:0] : f_len;
            cur_trunc_reg <= f_cut || fi_trunc[f_head];
            issue_reg <= issue_reg + 16'd1;
        end
    end
    if (wr_valid && wr_ready) wr_valid <= 1'b0;
    if (busy_reg && wr_done) begin
        // data is out: free the store, then the record (an RX interrupt follows the record only)
        busy_reg <= 1'b0;
        fi_rd_reg <= fi_rd_reg + 1'b1;
        cw_valid <= 1'b1;
        cw_index <= cur_idx_reg;
        cw_len <= cur_len_reg;
        cw_trunc <= cur_trunc_reg;
        cw_phase <= rec_phase_reg;
        if (cur_idx_reg == q_mask) rec_phase_reg <= !rec_phase_reg;
    end
    if (cw_valid && cw_ready) cw_valid <= 1'b0;
    rec_inflight_reg <= rec_inflight_reg + {4'd0, cw_valid && cw_ready} - {4'd0, cw_done};
    if (cw_done) begin
        cons_adv <= 1'b1;
`ifndef NIC_FAULT_IRQ_BEFORE_DATA
        irq_event <= 1'b1;
`endif
        stat_pkt <= 1'b1;
        stat_bytes <= cw_len;
        stat_trunc <= cw_trunc;
    end

    /* disabled and drained: descriptors start afresh; stored frames wait for the next buffers */
    if (!q_enable) restart_reg <= 1'b1;
    if (idle_reset || rst) begin
        restart_reg <= !q_enable;
        fetch_reg <= 16'd0;
        issue_reg <= 16'd0;
        df_busy_reg <= 1'b0;
        stopped_reg <= 1'b0;
        rec_phase_reg <= 1'b0;
        rd_valid <= 1'b0;
    end
    if (rst) begin
        st_start_reg <= {STORE_AW{1'b0}};
        fr_len_reg <= 16'd0;
        fr_beats_reg <= 16'd0;
        fr_trunc_reg <= 1'b0;
        st_used_reg <= {(STORE_AW+1){1'b0}};
        fi_wr_reg <= {(FW+1){1'b0}};
        fi_rd_reg <= {(FW+1){1'b0}};
        busy_reg <= 1'b0;
        wr_valid <= 1'b0;
        cw_valid <= 1'b0;
        rec_inflight_reg <= 5'd0;
        cons_adv <= 1'b0;
        err_valid <= 1'b0;
    end
end

wire unused_ok = &{1'b0, d_len[31:16], df_n[15:5], fr_beats_reg[15:STORE_AW-1]};

endmodule

`resetall
