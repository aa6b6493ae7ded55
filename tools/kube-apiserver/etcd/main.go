// etcd, the store kube-apiserver needs for the server-side dry run of a kubernetes bundle: the
// etcd server module at the version kube-apiserver's own module requires (see ../go.mod).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
