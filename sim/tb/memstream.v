// Simulator-side stimulus for ssvq_accel (docs/ARCH.md, "Regression stimulus").
//
// Why: driving every beat from Python costs a Python wake-up per cycle (about 30k
// cycles/s on Verilator). Here the layer streams come from memory ($readmemh of the
// images' stream.hex, laid end to end) and the input gaps and output back-pressure
// from one 32-bit LFSR per side, so Python only wakes per output beat and per layer.
//
// Files (plusargs, read at time 0):
//   +ssvq_in=F     $readmemh into in_mem: every layer's stream.hex, one after another
//   +ssvq_tab=F    $readmemh into tab: per layer
//                  {out_start[31:0], n_out[31:0], n_beats[31:0], start[31:0]}
//   +ssvq_marks=F  $readmemh into marks: per input beat {block, last, first, section[2:0]}
//   +ssvq_exp=F    $readmemh into exp: every layer's golden output beats, end to end
//   +ssvq_expcyc=F $readmemh into expcyc: each golden output beat's cycle after the header
//   +ssvq_cov=F, +ssvq_out=F, +ssvq_outcyc=F
//                  $writememh of cov, of the accepted output beats and of their cycles
//                  (after the header) when dump_cov rises
// Every output beat is compared with its golden value as it is accepted (and with its
// golden cycle when check_cycles is set); a difference is printed at once and counted.
// Settings are inputs that cocotb sets before it releases rst and keeps stable.
//
// Conventions (the same as sim/tb/driver.py and monitor.py): cycle c is the cycle
// whose closing edge is the c-th rising edge after time 0 (register `cycle` holds c
// during it); a transfer in cycle c has valid and ready high during c.
`timescale 1ns/1ps
module ssvq_memstream_tb #(
    parameter integer BUS = 64,
    parameter integer DEPTH_LOG2 = 16,    // input beats held (all layers of a run)
    parameter integer LAYERS_LOG2 = 8     // layers per run
) (
    input  wire rst /*verilator public_flat_rw*/,
    input  wire [15:0] in_gap_thr /*verilator public_flat_rw*/,        // a beat is withheld with probability thr/65536
    input  wire [15:0] out_bp_thr /*verilator public_flat_rw*/,        // o_ready is low with probability thr/65536
    input  wire [31:0] in_seed /*verilator public_flat_rw*/,
    input  wire [31:0] out_seed /*verilator public_flat_rw*/,
    input  wire        seed_load /*verilator public_flat_rw*/,         // high: (re)load both LFSRs from the seeds
    input  wire [15:0] latency /*verilator public_flat_rw*/,           // cycles before a layer's first beat is offered
    input  wire        overlap /*verilator public_flat_rw*/,           // queue a layer's header behind the previous one
    input  wire [LAYERS_LOG2:0] n_layers /*verilator public_flat_rw*/,
    input  wire        force_bp /*verilator public_flat_rw*/,          // directed tests: hold o_ready low
    input  wire        dump_cov /*verilator public_flat_rw*/,
    input  wire        check_cycles /*verilator public_flat_rw*/,  // no stalls: golden cycles hold

    output reg  [31:0] cycle /*verilator public_flat_rw*/ = 0,
    // the source: layer it is on and beats of it accepted
    output reg  [LAYERS_LOG2:0] src_layer /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] src_pos /*verilator public_flat_rw*/ = 0,
    // the sink: every accepted output beat, the last one's payload and cycle
    output reg  [31:0] out_count /*verilator public_flat_rw*/ = 0,
    output reg  [BUS-1:0] out_data /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] out_cycle /*verilator public_flat_rw*/ = 0,
    output reg  [LAYERS_LOG2:0] out_layer /*verilator public_flat_rw*/ = 0,   // layer whose output beats come next
    output reg  [31:0] out_pos /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] hdr_cycle /*verilator public_flat_rw*/ = 0,            // cycle out_layer's first beat was accepted
    // once per finished layer (its last output beat was accepted the cycle before):
    output reg  [31:0] layer_events /*verilator public_flat_rw*/ = 0,
    output reg  [LAYERS_LOG2:0] res_layer /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] res_hdr_cycle /*verilator public_flat_rw*/ = 0,        // cycle its first header beat was accepted
    output reg  [31:0] res_last_cycle /*verilator public_flat_rw*/ = 0,       // cycle of its last output beat
    output reg  [31:0] res_stall_ports /*verilator public_flat_rw*/ = 0,      // cnt_stall's definition, from the ports
    output reg  [31:0] res_stall_gen /*verilator public_flat_rw*/ = 0,        // stall cycles the generators made
    output reg  [31:0] res_gaps /*verilator public_flat_rw*/ = 0,             // beats withheld (cycles), whole layer
    output reg  [31:0] res_in_beats /*verilator public_flat_rw*/ = 0,         // input beats of it accepted
    output reg  [31:0] res_mismatches /*verilator public_flat_rw*/ = 0,       // output beats != golden
    output reg  [31:0] res_late /*verilator public_flat_rw*/ = 0,             // beats off their golden cycle
    output reg  [31:0] extra_beats /*verilator public_flat_rw*/ = 0,          // after the last layer's
    output reg         res_busy /*verilator public_flat_rw*/ = 0,             // busy in the cycle after the last beat
    // the DUT's counters then
    output reg  [31:0] res_cycles /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] res_stall /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] res_header /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] res_codebook /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] res_params /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] res_acts /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] res_weights /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] res_out /*verilator public_flat_rw*/ = 0,
    output reg  [31:0] resets /*verilator public_flat_rw*/ = 0,               // layers abandoned by a reset
    output reg  [31:0] reset_out_pos /*verilator public_flat_rw*/ = 0,        // its output beats before
    output reg  [31:0] res_status /*verilator public_flat_rw*/ = 0,           // STATUS register then
    output reg  [31:0] res_tlast_bad /*verilator public_flat_rw*/ = 0,        // output beats with a wrong m_axis_tlast
    output reg         rd_overrun /*verilator public_flat_rw*/ = 0,           // a layer ended while registers were read
    input  wire        rd_req /*verilator public_flat_rw*/,                   // rising: read the registers (no layer event)
    output reg  [31:0] reg_events /*verilator public_flat_rw*/ = 0            // reads done for rd_req
);
    // The clock is made here, not by cocotb: a clock from cocotb costs a trip through
    // the simulator's VPI every half period, which bounds Verilator at ~80k cycles/s.
    // One time step per cycle: the clock rises and falls in the same step (#0), so the
    // simulator and cocotb's per-step callbacks run once a cycle, not twice (1.25x);
    // with +ssvq_visible_clock (waves) it is high for half the period instead.
    // Only what cocotb reads is public (the runner passes --no-public-flat-rw: making
    // every signal public stops Verilator from optimizing the design, 3x slower).
    reg clk /*verilator public_flat_rd*/ = 0;
    reg visible_clock = 0;
    initial visible_clock = $test$plusargs("ssvq_visible_clock");
    always begin          // period 10 ns (test_memstream.PERIOD_NS)
        if (visible_clock) begin #5 clk = 1'b1; #5 clk = 1'b0; end
        else begin #10 clk = 1'b1; #0 clk = 1'b0; end
    end

    localparam integer DEPTH = 1 << DEPTH_LOG2;
    localparam integer LAYERS = 1 << LAYERS_LOG2;
    localparam integer BINS = 32;     // per layer: section*6 + position*2 + event

    reg [BUS-1:0] in_mem [0:DEPTH-1];
    localparam integer OUT_DEPTH = 1 << (DEPTH_LOG2 - 2);   // a row's params alone are a beat
    reg [127:0] tab [0:LAYERS-1];
    reg [BUS-1:0] exp_mem [0:OUT_DEPTH-1];
    reg [31:0] expcyc [0:OUT_DEPTH-1];
    reg [BUS-1:0] out_mem [0:OUT_DEPTH-1];
    reg [31:0] out_cyc [0:OUT_DEPTH-1];
    reg [7:0] marks [0:DEPTH-1];
    reg [15:0] cov [0:LAYERS*BINS-1];

    // ------------------------------------------------------------------ the DUT
    reg  i_valid = 0;
    reg  i_last = 0;
    reg  [BUS-1:0] i_data = 0;
    wire i_ready;
    reg  o_ready = 0;
    wire o_valid /*verilator public_flat_rd*/;
    wire o_last;
    wire [BUS-1:0] o_data;
    wire busy /*verilator public_flat_rd*/;
    wire irq;
    // AXI4-Lite master (reads only; the read sequencer below)
    reg  [7:0] ar_addr = 0;
    reg  ar_valid = 0;
    wire ar_ready, r_valid, aw_ready, w_ready, b_valid;
    wire [31:0] r_data;
    wire [1:0] r_resp, b_resp;


    // rst from cocotb, registered: the DUT's combinational logic then depends on
    // registers only, so Verilator evaluates it once per clock edge instead of on
    // every change of a top-level input (twice as fast). Reset is synchronous anyway.
    reg rst_q /*verilator public_flat_rd*/ = 1;
    always @(posedge clk) rst_q <= rst;

    ssvq_accel dut (
        .clk(clk), .rst(rst_q),
        .s_axis_tdata(i_data), .s_axis_tvalid(i_valid), .s_axis_tready(i_ready),
        .s_axis_tlast(i_last),
        .m_axis_tdata(o_data), .m_axis_tvalid(o_valid), .m_axis_tready(o_ready),
        .m_axis_tlast(o_last),
        .s_axil_awaddr(8'd0), .s_axil_awvalid(1'b0), .s_axil_awready(aw_ready),
        .s_axil_wdata(32'd0), .s_axil_wstrb(4'd0), .s_axil_wvalid(1'b0), .s_axil_wready(w_ready),
        .s_axil_bresp(b_resp), .s_axil_bvalid(b_valid), .s_axil_bready(1'b1),
        .s_axil_araddr(ar_addr), .s_axil_arvalid(ar_valid), .s_axil_arready(ar_ready),
        .s_axil_rdata(r_data), .s_axil_rresp(r_resp), .s_axil_rvalid(r_valid),
        .s_axil_rready(1'b1),
        .irq(irq), .busy(busy));

    // ------------------------------------------------------------------- files
    reg [1023:0] fname;
    integer k;
    initial begin
        for (k = 0; k < LAYERS * BINS; k = k + 1) cov[k] = 0;
        for (k = 0; k < LAYERS; k = k + 1) tab[k] = 0;
        if ($value$plusargs("ssvq_in=%s", fname)) $readmemh(fname, in_mem);
        if ($value$plusargs("ssvq_tab=%s", fname)) $readmemh(fname, tab);
        if ($value$plusargs("ssvq_marks=%s", fname)) $readmemh(fname, marks);
        if ($value$plusargs("ssvq_exp=%s", fname)) $readmemh(fname, exp_mem);
        if ($value$plusargs("ssvq_expcyc=%s", fname)) $readmemh(fname, expcyc);
        if ($value$plusargs("ssvq_waves=%s", fname)) begin
            $dumpfile(fname);
            $dumpvars(0, ssvq_memstream_tb);
        end
    end
    reg dump_q = 0;
    always @(posedge clk) begin
        dump_q <= dump_cov;
        if (dump_cov && !dump_q) begin
            if ($value$plusargs("ssvq_cov=%s", fname)) $writememh(fname, cov);
            if ($value$plusargs("ssvq_out=%s", fname)) $writememh(fname, out_mem);
            if ($value$plusargs("ssvq_outcyc=%s", fname)) $writememh(fname, out_cyc);
        end
    end

    // ------------------------------------------------------------- generators
    // Galois LFSR, x^32 + x^22 + x^2 + x + 1; the low 16 bits are the draw
    function [31:0] lfsr_step(input [31:0] s);
        lfsr_step = s[0] ? ((s >> 1) ^ 32'h80200003) : (s >> 1);
    endfunction
    reg [31:0] lfsr_in = 1, lfsr_out = 1;
    wire gap_draw = lfsr_in[15:0] < in_gap_thr;
    wire bp_draw = lfsr_out[15:0] < out_bp_thr;

    // ------------------------------------------------------------------ source
    wire i_fire = i_valid & i_ready & ~rst_q;
    wire o_fire = o_valid & o_ready & ~rst_q;
    wire [127:0] cur = tab[src_layer[LAYERS_LOG2-1:0]];
    wire last_of_layer = i_fire && (src_pos + 1 == cur[63:32]);
    wire [LAYERS_LOG2:0] nx_layer = last_of_layer ? src_layer + 1 : src_layer;
    wire [31:0] nx_pos = i_fire ? (last_of_layer ? 32'd0 : src_pos + 1) : src_pos;
    wire [127:0] nx = tab[nx_layer[LAYERS_LOG2-1:0]];
    wire [DEPTH_LOG2-1:0] nx_addr = nx[31:0] + nx_pos;
    reg armed = 0;                 // the current layer may offer its first beat ...
    reg [15:0] lat_left = 0;       // ... after this many more cycles
    reg inflight = 0;              // out_layer's header accepted, its outputs not all in
    // a new layer may start: always with overlap, else once the previous one finished
    wire prev_clear = overlap || nx_layer == 0 || (out_layer >= nx_layer && !busy);
    reg gap_now = 0;               // valid is low this cycle because of a gap draw
    reg gap_seen = 0, bp_seen = 0; // since the last accepted beat
    wire [7:0] mk = marks[cur[31:0] + src_pos];
    wire [4:0] bin_base = mk[2:0] * 6;

    always @(posedge clk) begin
        cycle <= cycle + 1;
        lfsr_in <= seed_load ? (in_seed == 0 ? 32'h1 : in_seed) : lfsr_step(lfsr_in);
        lfsr_out <= seed_load ? (out_seed == 0 ? 32'h1 : out_seed) : lfsr_step(lfsr_out);
        gap_now <= 0;
        if (rst_q) begin
            // a stream interrupted by reset is abandoned; the next layer starts clean
            i_valid <= 0;
            armed <= 0;
            gap_seen <= 0;
            if (inflight && src_layer == out_layer) src_layer <= src_layer + 1;
            src_pos <= 0;
        end else begin
            if (i_fire) begin
                src_pos <= nx_pos;
                src_layer <= nx_layer;
                gap_seen <= 0;
                if (last_of_layer) armed <= 0;
                // coverage: the accepted beat's marks x what happened while it was next
                if (mk[3]) begin
                    if (gap_seen) cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd0}] <= cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd0}] + 1;
                    if (bp_seen || (o_valid && !o_ready)) cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd1}] <= cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd1}] + 1;
                end
                if (mk[4]) begin
                    if (gap_seen) cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd2}] <= cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd2}] + 1;
                    if (bp_seen || (o_valid && !o_ready)) cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd3}] <= cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd3}] + 1;
                end
                if (mk[5]) begin
                    if (gap_seen) cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd4}] <= cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd4}] + 1;
                    if (bp_seen || (o_valid && !o_ready)) cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd5}] <= cov[{src_layer[LAYERS_LOG2-1:0], bin_base + 5'd5}] + 1;
                end
            end
            // next cycle's valid: a beat is held until accepted (stream rule)
            if (!i_valid || i_fire) begin
                i_valid <= 0;
                if (nx_layer >= n_layers) begin
                    // nothing left to send
                end else if (nx_pos == 0 && !(armed && !last_of_layer)) begin
                    if (prev_clear) begin
                        armed <= 1;
                        lat_left <= latency;
                    end
                end else if (nx_pos == 0 && lat_left != 0) begin
                    lat_left <= lat_left - 1;
                end else if (gap_draw) begin
                    i_data <= {8{lfsr_in}};              // junk while valid is low (truncated to BUS)
                    gap_now <= 1;
                    gap_seen <= 1;
                end else begin
                    i_valid <= 1;
                    i_data <= in_mem[nx_addr];
                    i_last <= nx_pos + 1 == nx[63:32];     // s_axis_tlast: the layer's last beat
                end
            end
        end
    end

    // -------------------------------------------------------------------- sink
    wire stall_ports = (i_ready && !i_valid) || (o_valid && !o_ready);
    wire stall_gen = (i_ready && gap_now) || (o_valid && !o_ready);
    reg in_window = 0;             // after a header, up to its layer's last output beat
    reg [31:0] stall_p = 0, stall_g = 0, gaps = 0, in_beats = 0;
    reg snap = 0;
    reg [31:0] tl_bad = 0;         // output beats of out_layer with a wrong m_axis_tlast
    wire [127:0] ocur = tab[out_layer[LAYERS_LOG2-1:0]];
    wire o_lastbeat = out_pos + 1 == ocur[95:64];
    wire [31:0] oidx = ocur[127:96] + out_pos;
    wire [31:0] orel = cycle - hdr_cycle;
    wire obad = o_data !== exp_mem[oidx[DEPTH_LOG2-3:0]];
    wire olate = check_cycles && orel != expcyc[oidx[DEPTH_LOG2-3:0]];
    reg [31:0] mism = 0, late = 0;
    // Register reads over AXI4-Lite: STATUS, then the eight counters of the counter bank
    // (the last finished layer's, latched by the DUT the cycle after its last output
    // beat). Started in the cycle after a layer's last output beat (snap) or by rd_req;
    // the first read is offered the cycle after, when the bank holds the layer's values.
    // Two cycles a read; the layer event is raised when the last value is in.
    reg rd_busy = 0, rd_layer = 0, rd_req_q = 0;
    reg [3:0] rd_idx = 0;

    always @(posedge clk) begin
        o_ready <= !force_bp && !bp_draw;
        snap <= 0;
        // back-pressure while the next beat is offered or withheld by a gap
        if (!rst_q && o_valid && !o_ready && (i_valid || gap_now)) bp_seen <= 1;
        if (i_fire) bp_seen <= 0;
        if (rst_q) begin
            in_window <= 0;
            bp_seen <= 0;
            if (inflight) begin
                resets <= resets + 1;
                reset_out_pos <= out_pos;
                inflight <= 0;
                out_layer <= out_layer + 1;
                out_pos <= 0;
            end
        end else begin
            if (i_fire && src_pos == 0) begin
                hdr_cycle <= cycle;
                inflight <= 1;
                in_window <= 1;
                stall_p <= 0;
                stall_g <= 0;
                gaps <= 0;
                in_beats <= 1;
            end else begin
                if (i_fire) in_beats <= in_beats + 1;
                if (in_window) begin
                    stall_p <= stall_p + stall_ports;
                    stall_g <= stall_g + stall_gen;
                    gaps <= gaps + gap_now;
                end
            end
            if (i_fire && src_pos == 0) begin
                mism <= 0;
                late <= 0;
            end
            if (o_fire && out_layer >= n_layers) extra_beats <= extra_beats + 1;
            if (o_fire && out_layer < n_layers) begin
                out_mem[oidx[DEPTH_LOG2-3:0]] <= o_data;
                out_cyc[oidx[DEPTH_LOG2-3:0]] <= orel;
                if (obad) begin
                    mism <= mism + 1;
                    $display("memstream: layer %0d output beat %0d (cycle %0d after its header): expected %h, found %h",
                             out_layer, out_pos, orel, exp_mem[oidx[DEPTH_LOG2-3:0]], o_data);
                end
                if (olate) begin
                    late <= late + 1;
                    $display("memstream: layer %0d output beat %0d accepted %0d cycles after its header, golden %0d",
                             out_layer, out_pos, orel, expcyc[oidx[DEPTH_LOG2-3:0]]);
                end
            end
            if (o_fire) begin
                if (o_last != o_lastbeat) tl_bad <= tl_bad + 1;
                out_count <= out_count + 1;
                out_data <= o_data;
                out_cycle <= cycle;
                if (out_pos + 1 == ocur[95:64]) begin
                    // the layer's last output beat: results now, counters next cycle
                    out_pos <= 0;
                    out_layer <= out_layer + 1;
                    inflight <= 0;
                    in_window <= 0;
                    res_layer <= out_layer;
                    res_hdr_cycle <= hdr_cycle;
                    res_last_cycle <= cycle;
                    res_stall_ports <= stall_p + stall_ports;
                    res_stall_gen <= stall_g + stall_gen;
                    res_gaps <= gaps;
                    res_in_beats <= in_beats + i_fire;
                    res_tlast_bad <= tl_bad + (o_last != 1'b1);
                    tl_bad <= 0;
                    res_mismatches <= mism + obad;
                    res_late <= late + olate;
                    snap <= 1;
                end else begin
                    out_pos <= out_pos + 1;
                end
            end
        end
        if (snap) res_busy <= busy;
        rd_req_q <= rd_req;
        if (rst_q) begin
            rd_busy <= 0;
            ar_valid <= 0;
            tl_bad <= 0;
        end else if (!rd_busy && (snap || (rd_req && !rd_req_q))) begin
            rd_busy <= 1;
            rd_layer <= snap;
            rd_idx <= 0;
            ar_valid <= 1;
            ar_addr <= 8'h24;                       // STATUS
        end else if (rd_busy) begin
            if (snap) rd_overrun <= 1;
            if (ar_valid && ar_ready) ar_valid <= 0;
            if (r_valid) begin
                case (rd_idx)
                    4'd0: res_status <= r_data;
                    4'd1: res_cycles <= r_data;
                    4'd2: res_stall <= r_data;
                    4'd3: res_header <= r_data;
                    4'd4: res_codebook <= r_data;
                    4'd5: res_params <= r_data;
                    4'd6: res_acts <= r_data;
                    4'd7: res_weights <= r_data;
                    default: res_out <= r_data;
                endcase
                if (rd_idx == 4'd8) begin
                    rd_busy <= 0;
                    if (rd_layer) layer_events <= layer_events + 1;
                    else reg_events <= reg_events + 1;
                end else begin
                    rd_idx <= rd_idx + 1;
                    ar_valid <= 1;
                    ar_addr <= 8'h40 + {rd_idx, 2'b00};   // CNT_CYCLES + 4 * (rd_idx)
                end
            end
        end
    end
endmodule
