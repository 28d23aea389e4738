"""Post-hoc reduction of trained runs: rank SPECs, decompositions, calibration, reduce, search, spectrum."""
