from phoenix.cli.entry import main

main()
