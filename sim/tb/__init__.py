"""cocotb testbench for the `ssvq_accel` top module.

driver.StreamDriver      memory model feeding the input stream (latency, random gaps)
monitor.StreamMonitor    output-stream sink (random back-pressure) recording each beat
scoreboard.Scoreboard    compares beats, acceptance cycles and counters with sim.golden
test_accel               the cocotb test module; reads the job JSON named by $SSVQ_TB_JOB

sim.runner builds the Verilog and runs jobs; nothing here imports Amaranth.
"""
