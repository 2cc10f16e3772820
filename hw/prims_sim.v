// Behavioural simulation models of the two ECP5 primitives hw/prims.py instantiates
// (yosys ships only black boxes for them). Written from Lattice TN1264 (ECP5 memory
// usage guide: DP16KD) and TN1267 (ECP5 sysDSP usage guide: MULT18X18D) for the
// subset the accelerator uses; any other parameter value stops the simulation.
// Not for synthesis: yosys and nextpnr use their own cell library.
//
// DP16KD: 18 Kbit true dual-port block RAM. Both ports have the same width W in
// {1, 2, 4, 9, 18}; the word address is AD13..AD(log) (log = 0, 1, 2, 3, 4), and at
// W = 18 AD1/AD0 are the byte enables of bits 17..9 / 8..0. A port with CE high
// writes DI on a clock edge with WE high (WRITEMODE NORMAL: its output keeps its
// value), otherwise reads the addressed word into its output latch. REGMODE OUTREG
// adds the output register, loaded from the latch on an edge with OCE high. RST
// (RESETMODE SYNC) clears latch and register on a clock edge, whatever CE and OCE.
// Chip selects: CS2..0 must equal CSDECODE (only "0b000" is modelled).
// The primitives' full parameter lists are declared so that any instance elaborates;
// the ones outside the modelled subset are unused.
// verilator lint_off UNUSEDPARAM
module DP16KD(
  input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
  input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
  input CEA, OCEA, CLKA, WEA, RSTA,
  input CSA2, CSA1, CSA0,
  output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
  input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
  input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
  input CEB, OCEB, CLKB, WEB, RSTB,
  input CSB2, CSB1, CSB0,
  output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
  parameter DATA_WIDTH_A = 18;
  parameter DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG";
  parameter REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC";
  parameter ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000";
  parameter CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL";
  parameter WRITEMODE_B = "NORMAL";
  parameter GSR = "ENABLED";

  localparam W = DATA_WIDTH_A;
  localparam LOG = W == 18 ? 4 : W == 9 ? 3 : W == 4 ? 2 : W == 2 ? 1 : 0;
  localparam WORDS = 16384 >> LOG;

  initial begin
    if (DATA_WIDTH_A != DATA_WIDTH_B || !(W == 1 || W == 2 || W == 4 || W == 9 || W == 18))
      begin $display("ERROR: DP16KD model: widths %0d/%0d not modelled (equal widths 1, 2, 4, 9, 18)",
             DATA_WIDTH_A, DATA_WIDTH_B); $finish; end
    if (RESETMODE != "SYNC" || WRITEMODE_A != "NORMAL" || WRITEMODE_B != "NORMAL"
        || CSDECODE_A != "0b000" || CSDECODE_B != "0b000")
      begin $display("ERROR: DP16KD model: only RESETMODE SYNC, WRITEMODE NORMAL, CSDECODE 0b000"); $finish; end
    if ((REGMODE_A != "NOREG" && REGMODE_A != "OUTREG") ||
        (REGMODE_B != "NOREG" && REGMODE_B != "OUTREG"))
      begin $display("ERROR: DP16KD model: REGMODE must be NOREG or OUTREG"); $finish; end
  end

  reg [17:0] mem [0:WORDS-1];
  wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0}, dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
  wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0}, adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
  wire [13:0] wa = ada >> LOG, wb = adb >> LOG;
  wire sela = {CSA2, CSA1, CSA0} == 3'b000, selb = {CSB2, CSB1, CSB0} == 3'b000;
  reg [17:0] lat_a = 0, lat_b = 0, out_a = 0, out_b = 0;
  // at W = 18 the byte enables pick the 9-bit halves to write
  wire [17:0] bea = W == 18 ? {{9{ada[1]}}, {9{ada[0]}}} : {18{1'b1}};
  wire [17:0] beb = W == 18 ? {{9{adb[1]}}, {9{adb[0]}}} : {18{1'b1}};
  wire [17:0] wmask = (18'h3ffff >> (18 - W));

  always @(posedge CLKA) begin
    if (RSTA) begin
      lat_a <= 0;
    end else if (CEA && sela) begin
      if (WEA) mem[wa] <= (mem[wa] & ~(bea & wmask)) | (dia & bea & wmask);
      else lat_a <= mem[wa] & wmask;
    end
    if (RSTA) out_a <= 0;
    else if (OCEA) out_a <= lat_a;
  end
  always @(posedge CLKB) begin
    if (RSTB) begin
      lat_b <= 0;
    end else if (CEB && selb) begin
      if (WEB) mem[wb] <= (mem[wb] & ~(beb & wmask)) | (dib & beb & wmask);
      else lat_b <= mem[wb] & wmask;
    end
    if (RSTB) out_b <= 0;
    else if (OCEB) out_b <= lat_b;
  end
  wire [17:0] doa = REGMODE_A == "OUTREG" ? out_a : lat_a;
  wire [17:0] dob = REGMODE_B == "OUTREG" ? out_b : lat_b;
  assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = doa;
  assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = dob;
endmodule

// MULT18X18D: 18 x 18 multiplier, A and B signed when SIGNEDA / SIGNEDB are high.
// REG_INPUTA_CLK / REG_INPUTB_CLK / REG_OUTPUT_CLK = "CLK0" put a register on A, B
// (with its sign control) and P, clocked by CLK0 with enable CE0 and synchronous
// reset RST0 (RESETMODE SYNC: reset wins, whatever CE0); "NONE" bypasses it. The
// pipeline register, input C, the shift chains and cascading are not modelled.
module MULT18X18D(
  input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
  input B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
  input C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0,
  input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
  input CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0,
  input SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0,
  input SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0,
  output SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0,
  output SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0,
  output ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0,
  output ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0,
  output ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0,
  output P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0,
  output SIGNEDP
);
  parameter REG_INPUTA_CLK = "NONE";
  parameter REG_INPUTA_CE = "CE0";
  parameter REG_INPUTA_RST = "RST0";
  parameter REG_INPUTB_CLK = "NONE";
  parameter REG_INPUTB_CE = "CE0";
  parameter REG_INPUTB_RST = "RST0";
  parameter REG_INPUTC_CLK = "NONE";
  parameter REG_INPUTC_CE = "CE0";
  parameter REG_INPUTC_RST = "RST0";
  parameter REG_PIPELINE_CLK = "NONE";
  parameter REG_PIPELINE_CE = "CE0";
  parameter REG_PIPELINE_RST = "RST0";
  parameter REG_OUTPUT_CLK = "NONE";
  parameter REG_OUTPUT_CE = "CE0";
  parameter REG_OUTPUT_RST = "RST0";
  parameter CLK0_DIV = "ENABLED";
  parameter CLK1_DIV = "ENABLED";
  parameter CLK2_DIV = "ENABLED";
  parameter CLK3_DIV = "ENABLED";
  parameter HIGHSPEED_CLK = "NONE";
  parameter GSR = "ENABLED";
  parameter CAS_MATCH_REG = "FALSE";
  parameter SOURCEB_MODE = "B_SHIFT";
  parameter MULT_BYPASS = "DISABLED";
  parameter RESETMODE = "SYNC";

  localparam RA = REG_INPUTA_CLK == "CLK0", RB = REG_INPUTB_CLK == "CLK0",
             RP = REG_OUTPUT_CLK == "CLK0";
  initial begin
    if ((REG_INPUTA_CLK != "NONE" && !RA) || (REG_INPUTB_CLK != "NONE" && !RB) ||
        (REG_OUTPUT_CLK != "NONE" && !RP) || REG_PIPELINE_CLK != "NONE" ||
        REG_INPUTA_CE != "CE0" || REG_INPUTB_CE != "CE0" || REG_OUTPUT_CE != "CE0" ||
        REG_INPUTA_RST != "RST0" || REG_INPUTB_RST != "RST0" || REG_OUTPUT_RST != "RST0" ||
        RESETMODE != "SYNC" || MULT_BYPASS != "DISABLED")
      begin $display("ERROR: MULT18X18D model: only CLK0/CE0/RST0 input and output registers, SYNC reset"); $finish; end
  end

  wire [17:0] a_in = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0}, b_in = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
  reg [17:0] a_r = 0, b_r = 0;
  reg sa_r = 0, sb_r = 0;
  reg [35:0] p_r = 0;
  wire [17:0] a = RA ? a_r : a_in, b = RB ? b_r : b_in;
  wire sa = RA ? sa_r : SIGNEDA, sb = RB ? sb_r : SIGNEDB;
  // 19-bit signed operands (a sign bit below an unsigned operand is 0), so both
  // sign-extend in the signed product
  wire signed [18:0] ax = {sa & a[17], a}, bx = {sb & b[17], b};
  wire signed [37:0] prod = ax * bx;
  always @(posedge CLK0) begin
    if (RST0) begin
      a_r <= 0; b_r <= 0; sa_r <= 0; sb_r <= 0; p_r <= 0;
    end else if (CE0) begin
      a_r <= a_in; b_r <= b_in; sa_r <= SIGNEDA; sb_r <= SIGNEDB; p_r <= prod[35:0];
    end
  end
  wire [35:0] p = RP ? p_r : prod[35:0];
  assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = p;
  assign SIGNEDP = sa | sb;
  assign {SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0} = 18'd0;
  assign {SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0} = 18'd0;
  assign {ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0} = a;
  assign {ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0} = b;
  assign {ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0} = 18'd0;
endmodule
// verilator lint_on UNUSEDPARAM
