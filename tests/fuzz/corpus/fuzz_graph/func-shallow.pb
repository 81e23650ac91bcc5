

xPlaceholder*
dtype0
G
deepPartitionedCallx*+
f&R$
f
aR
f
aR
f
a"ó
