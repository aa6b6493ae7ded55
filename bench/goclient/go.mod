module obsgen/bench/goclient

go 1.22
