"""Analysis of finished runs: classifying configs, costs, statistics, paired tests, the comparison
table, its rendering and plot, and the answer a frontier study opens with."""
