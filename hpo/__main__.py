from hpo import main

main()
