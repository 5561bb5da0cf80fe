"""SePP mining: embedding bank, nearest-neighbour index, and the sample plan that pairs each anchor with its positive."""
