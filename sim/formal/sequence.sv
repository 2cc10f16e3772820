// "No output beat lost or duplicated under any back-pressure", for yosys' SMT flow.
// One DUT reads one concrete layer stream (STREAM, NB beats, written by
// sim/formal/__init__.py from ssvq.image.pack_layer) with free timing: the source's
// valid is free (the stream rules assumed), the sink's ready is free (any
// back-pressure). EXPECT holds the layer's OUT_BEATS output beats from ssvq.reference
// (pairwise different). Asserted: the k-th beat handed over is EXPECT[k]; no beat is
// offered after the last one; once the input is all taken, QUIET cycles in which the
// pipeline could move (no output beat waiting) see every beat handed over.
// docs/ARCH.md "Formal checks" explains why this means no beat lost or duplicated.
`default_nettype none
module ssvq_formal_sequence #(
  parameter BUS = 64, parameter NB = 13, parameter OUT_BEATS = 2, parameter QUIET = 20,
  parameter [NB*BUS-1:0] STREAM = 0, parameter [OUT_BEATS*BUS-1:0] EXPECT = 0
) (
  input wire clk,
  input wire i_valid_free,           // free
  input wire o_ready                 // free: any back-pressure
);
  reg init = 1'b1;                   // reset in the first cycle, then never
  always @(posedge clk) init <= 1'b0;
  wire rst = init;

  reg [7:0] n_in = 0, n_out = 0, live = 0;
  wire more = n_in < NB;
  wire i_valid = i_valid_free & more;
  wire [BUS-1:0] i_payload = more ? STREAM[n_in*BUS +: BUS] : {BUS{1'b0}};
  wire i_ready, o_valid, o_last;
  wire [BUS-1:0] o_payload;
  ssvq_accel dut (.clk(clk), .rst(rst),
    .s_axis_tdata(i_payload), .s_axis_tvalid(i_valid), .s_axis_tready(i_ready),
    .s_axis_tlast((n_in == NB - 1)),
    .m_axis_tdata(o_payload), .m_axis_tvalid(o_valid), .m_axis_tready(o_ready),
    .m_axis_tlast(o_last),
    // AXI4-Lite idle: no register access, so no soft reset
    .s_axil_awaddr(8'd0), .s_axil_awvalid(1'b0), .s_axil_wdata(32'd0), .s_axil_wstrb(4'd0),
    .s_axil_wvalid(1'b0), .s_axil_bready(1'b1), .s_axil_araddr(8'd0), .s_axil_arvalid(1'b0),
    .s_axil_rready(1'b1),
    .s_axil_awready(), .s_axil_wready(), .s_axil_bresp(), .s_axil_bvalid(),
    .s_axil_arready(), .s_axil_rdata(), .s_axil_rresp(), .s_axil_rvalid(),
    .irq(), .busy());

  wire o_wait = o_valid & ~o_ready;  // the whole pipeline is frozen this cycle
  reg i_wait = 1'b0, stalled = 1'b0;
  always @(posedge clk) begin
    i_wait <= i_valid & ~i_ready & ~rst;
    if (i_valid & i_ready) n_in <= n_in + 1;
    if (o_valid & o_ready & n_out != 8'hff) n_out <= n_out + 1;
    if (!more && !o_wait && live != QUIET) live <= live + 1;
    if (o_wait && n_out == 0) stalled <= 1'b1;
  end

  always @* begin
    // environment: a waiting input beat stays valid (its payload is STREAM[n_in], and
    // n_in only moves on a taken beat, so it is unchanged by construction)
    if (i_wait) assume (i_valid_free);
    if (o_valid && n_out < OUT_BEATS) beat_matches: assert (o_payload == EXPECT[n_out*BUS +: BUS]);
    no_extra_beat: assert (!(o_valid && n_out >= OUT_BEATS));
    if (live == QUIET) all_beats: assert (n_out == OUT_BEATS);
    // non-vacuity: every beat handed over after the first one waited (back-pressure
    // with the last row still in the pipeline)
    c_all_after_stall: cover (stalled && n_out == OUT_BEATS);
  end
endmodule
